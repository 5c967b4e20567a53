"""The browse pages in a real headless Chromium (Debian's, driven by Playwright): what a person
at the microscope sees and clicks."""

import os
import shutil
import socket
import threading
import time

import pytest
import uvicorn
from playwright.sync_api import expect, sync_playwright

from specimen_id.web import create_app

from conftest import QUERIES

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run"]


@pytest.fixture
def server(enrolled):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(enrolled.db)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def page():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser.new_page(viewport={"width": 1200, "height": 900})
        browser.close()


def test_browse_specimens_and_open_one(server, page):
    page.goto(server)
    expect(page.locator("#specimens .name")).to_have_count(6)
    page.get_by_text("he-tissue-a").click()
    expect(page.locator("h1")).to_have_text("he-tissue-a")
    expect(page.locator("main img")).to_have_count(2)
    assert page.locator("main img").first.evaluate("img => img.naturalWidth") > 0


def test_query_by_upload_then_move_the_threshold(server, page, tmp_path):
    page.goto(server + "/query")
    page.set_input_files("input[name=file]", str(QUERIES / "recapture-fluo-nuclei-b.jpg"))
    page.get_by_role("button", name="Identify").click()
    expect(page.locator("#decision-text")).to_have_text("match")
    expect(page.locator("#specimen")).to_have_text("fluo-nuclei-b")
    expect(page.locator(".candidate").first).to_contain_text("fluo-nuclei-b")
    # query and best candidate side by side, both loaded
    pair = page.locator(".candidate").first.locator(".pair img")
    expect(pair).to_have_count(2)
    assert all(pair.nth(i).evaluate("img => img.naturalWidth") > 0 for i in range(2))
    shot = tmp_path / "query-page.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    if os.environ.get("SPECIMEN_ID_SCREENSHOT_TO"):  # how the README's picture is made
        shutil.copy(shot, os.environ["SPECIMEN_ID_SCREENSHOT_TO"])
    page.locator("#threshold").fill("1")
    expect(page.locator("#decision-text")).to_have_text("no_match")
    page.locator("#threshold").fill("0.5")
    expect(page.locator("#decision-text")).to_have_text("match")
    # the result is in the history, and opens again
    page.get_by_role("link", name="History").click()
    expect(page.locator("#history")).to_contain_text("recapture-fluo-nuclei-b.jpg")
    page.locator("#history a").first.click()
    expect(page.locator("#specimen")).to_have_text("fluo-nuclei-b")


def test_a_bad_upload_is_refused_on_the_page(server, page, tmp_path):
    junk = tmp_path / "scan.jpg"
    junk.write_text("this is a text file")
    page.goto(server + "/query")
    page.set_input_files("input[name=file]", str(junk))
    page.get_by_role("button", name="Identify").click()
    expect(page.locator("#error")).to_contain_text("not an image")
    page.goto(server + "/history")
    expect(page.locator("#history")).to_contain_text("No queries yet.")
