"""Names, metadata and upload names written to inject SQL or HTML/JS are stored and shown as
plain text: the tables survive, and every page escapes them (TestClient), and a real browser
runs none of them."""

import json
from urllib.parse import quote

import pytest
from conftest import QUERIES, serving
from fastapi.testclient import TestClient
from playwright.sync_api import sync_playwright
from test_browser import CHROMIUM, FLAGS

from specimen_id.web import create_app

NAMES = ["Robert'); DROP TABLE specimens;--", "<img src=x onerror=alert(1)>", '"><svg onload=alert(2)>']
META = ['note=<script>alert("meta")</script>', "k'; DELETE FROM captures;--=' OR '1'='1",
        'caption=" onerror="alert(3)']
FILES = [QUERIES / "never-enrolled-1.jpg", QUERIES / "never-enrolled-2.jpg",
         QUERIES / "recapture-brightfield-a.jpg"]
RAW = [*NAMES, '<script>alert("meta")</script>', '" onerror="alert(3)', "<img src=x onerror=alert(4)>"]


@pytest.fixture
def hostile(enrolled):
    for name, meta, path in zip(NAMES, META, FILES):
        result = enrolled("enroll", "-s", name, "--meta", meta, path, "--allow-duplicate")
        assert result.exit_code == 0, result.output
    return enrolled


def test_injection_strings_are_stored_as_text(hostile):
    listed = hostile("list").output.splitlines()
    assert set(NAMES) <= set(listed) and len(listed) == 6 + 3
    shown = json.loads(hostile("show", NAMES[0], "--json").output)
    assert shown["metadata"] == {"note": '<script>alert("meta")</script>'}
    shown = json.loads(hostile("show", NAMES[1], "--json").output)
    assert shown["metadata"] == {"k'; DELETE FROM captures;--": "' OR '1'='1"}
    assert len(shown["captures"]) == 1
    assert json.loads(hostile("info", "--json").output)["captures"] == 8 + 3
    assert hostile("verify").exit_code == 0


def test_pages_escape_names_metadata_and_upload_names(hostile):
    client = TestClient(create_app(hostile.db), base_url="http://127.0.0.1")
    upload = ("<img src=x onerror=alert(4)>.jpg", FILES[0].read_bytes(), "image/jpeg")
    pages = [client.get("/"), client.get("/", params={"q": '"><script>alert(5)</script>'}),
             client.post("/query", files={"file": upload}), client.get("/history")]
    pages += [client.get(f"/specimens/{quote(name, safe='')}") for name in NAMES]
    for response in pages:
        assert response.status_code == 200, response.text
        for raw in [*RAW, '"><script>alert(5)</script>']:
            assert raw not in response.text, (response.url, raw)
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[0].text
    assert "&lt;img src=x onerror=alert(4)&gt;.jpg" in pages[3].text  # the upload's name
    assert "&lt;script&gt;alert(&#34;meta&#34;)&lt;/script&gt;" in pages[4].text
    # the JSON twin gives the names back exactly
    assert set(NAMES) <= {s["name"] for s in client.get("/api/specimens").json()}


def test_a_browser_runs_none_of_it(hostile):
    dialogs = []
    with serving(create_app(hostile.db)) as port:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(f"http://127.0.0.1:{port}/")
            for name in NAMES:
                page.goto(f"http://127.0.0.1:{port}/specimens/{quote(name, safe='')}")
                assert page.locator("h1").inner_text() == name
            browser.close()
    assert dialogs == []
