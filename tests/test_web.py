"""The browse app through an in-process HTTP client: pages, JSON twins, and its guards."""

import html

import pytest
from conftest import DATA, QUERIES, SPECIMENS
from fastapi.testclient import TestClient

from specimen_id.search.calibrate import reviewed_pairs
from specimen_id.search.score import SCORE_KIND
from specimen_id.store import Database
from specimen_id.web import create_app

SAME_SITE = {"Origin": "http://127.0.0.1"}


@pytest.fixture
def client(enrolled):
    enrolled("enroll", "-s", "he-tissue-b", "--meta", "stain=eosin", SPECIMENS / "he-tissue-b" / "capture-1.png")
    return TestClient(create_app(enrolled.db), base_url="http://127.0.0.1")


def _upload(client, path, url="/query", headers=SAME_SITE, **kw):
    return client.post(url, files={"file": (path.name, path.read_bytes())}, headers=headers, **kw)


def test_specimens_page_and_filter(client):
    page = client.get("/")
    assert page.status_code == 200
    for name in ("fluo-nuclei-a", "he-tissue-b", "brightfield-a"):
        assert f">{name}</strong>" in page.text
    filtered = client.get("/", params={"q": "eosin"}).text
    assert ">he-tissue-b</strong>" in filtered and ">fluo-nuclei-a</strong>" not in filtered
    data = client.get("/api/specimens").json()
    assert {s["name"] for s in data} >= {"fluo-nuclei-a", "he-tissue-a"}
    assert next(s for s in data if s["name"] == "he-tissue-a")["captures"] == 2


def test_specimen_page_shows_captures_and_serves_images(client):
    page = client.get("/specimens/he-tissue-a")
    assert page.status_code == 200 and page.text.count("/images/capture/") >= 4
    data = client.get("/api/specimens/he-tissue-a").json()
    capture = data["captures"][0]["uuid"]
    thumb = client.get(f"/images/capture/{capture}", params={"size": 128})
    assert thumb.headers["content-type"] == "image/jpeg" and thumb.content.startswith(b"\xff\xd8")
    assert client.get("/specimens/nobody").status_code == 404
    assert client.get("/api/specimens/nobody").json() == {"error": "no specimen named 'nobody' (see `specimen-id list`)"}


def test_query_by_upload_finds_the_specimen_and_is_logged(client):
    page = _upload(client, QUERIES / "recapture-fluo-nuclei-c.jpg")
    assert page.status_code == 200
    assert 'id="decision-text">match</span>' in page.text and '<span id="specimen">fluo-nuclei-c</span>' in page.text
    result = _upload(client, QUERIES / "recapture-he-tissue-a.jpg", "/api/query").json()
    assert (result["decision"], result["specimen"]) == ("match", "he-tissue-a")
    assert result["candidates"][0]["inliers"] > 10
    history = client.get("/api/history").json()
    assert [h["uuid"] for h in history[:2]] == [result["query_id"], history[1]["uuid"]]
    assert "recapture-fluo-nuclei-c.jpg" in client.get("/history").text
    again = client.get(f"/queries/{result['query_id']}")
    assert again.status_code == 200 and '<span id="specimen">he-tissue-a</span>' in again.text
    matches = client.get(f"/matches/{result['query_id']}/{result['candidates'][0]['capture']}")
    assert matches.content.startswith(b"\x89PNG")


def test_bad_upload_gets_a_message_and_changes_nothing(client, tmp_path):
    junk = tmp_path / "notes.jpg"
    junk.write_text("not an image at all")
    page = _upload(client, junk)
    assert page.status_code == 400 and "not an image" in page.text and 'id="error"' in page.text
    api = _upload(client, junk, "/api/query")
    assert api.status_code == 400 and "notes.jpg" in api.json()["error"]
    assert client.get("/api/history").json() == []


def test_uploads_are_limited_while_they_stream(enrolled):
    client = TestClient(create_app(enrolled.db, max_upload=20_000), base_url="http://127.0.0.1")
    big = SPECIMENS / "he-tissue-a" / "capture-1.png"  # ~150 kB
    assert _upload(client, big).status_code == 413
    assert client.get("/api/history").json() == []


def test_cross_site_posts_and_foreign_hosts_are_refused(client):
    refused = _upload(client, QUERIES / "recapture-he-tissue-a.jpg", headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403
    assert client.get("/api/history").json() == []
    rebinding = client.get("/", headers={"Host": "attacker.example"})
    assert rebinding.status_code == 400


@pytest.mark.parametrize("path", [
    "/images/capture/../../specimens.sqlite", "/images/capture/..%2F..%2Fspecimens.sqlite",
    "/images/capture/%2e%2e%2f%2e%2e%2fwrite.lock", "/images/../specimens.sqlite",
    "/images/query/..%5C..%5Cspecimens.sqlite", "/images/etc/passwd", "/images/capture/%2Fetc%2Fpasswd",
])
def test_no_route_reads_outside_the_database(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert b"SQLite format" not in response.content and b"root:" not in response.content


def test_off_loopback_needs_a_token(enrolled):
    with pytest.raises(ValueError, match="needs a token"):
        create_app(enrolled.db, host="0.0.0.0")
    app = create_app(enrolled.db, host="0.0.0.0", token="s3cret", allowed_hosts=["10.1.2.3"])
    client = TestClient(app, base_url="http://10.1.2.3")
    assert client.get("/").status_code == 401
    assert client.get("/", params={"token": "wrong"}).status_code == 401
    # the token in the address logs in, and the page comes again without it
    first = client.get("/history", params={"limit": "5", "token": "s3cret"}, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/history?limit=5"
    cookie = first.headers["set-cookie"]
    assert "specimen_id_token=s3cret" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
    assert client.get(first.headers["location"]).status_code == 200  # the cookie carries on
    assert client.get("/api/specimens").status_code == 200
    assert TestClient(app, base_url="http://10.1.2.3").get(
        "/api/specimens", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    over_https = TestClient(app, base_url="https://10.1.2.3").get("/", params={"token": "s3cret"},
                                                                  follow_redirects=False)
    assert over_https.status_code == 303 and "Secure" in over_https.headers["set-cookie"]
    # the redirect stays on this site, whatever the address looks like
    away = client.get("http://10.1.2.3//evil.example/phish", params={"token": "s3cret"}, follow_redirects=False)
    assert away.status_code == 303 and away.headers["location"] == "/evil.example/phish"


def test_off_loopback_only_the_allowed_host_names_are_served(enrolled):
    """A page reached under a name the server was not told about (DNS rebinding) is refused."""
    import socket

    bearer = {"Authorization": "Bearer s3cret"}
    named = create_app(enrolled.db, host="0.0.0.0", token="s3cret", allowed_hosts=["lab-pc.example.org"])
    assert TestClient(named, base_url="http://lab-pc.example.org").get("/", headers=bearer).status_code == 200
    assert TestClient(named, base_url="http://10.1.2.3").get("/", headers=bearer).status_code == 400
    default = create_app(enrolled.db, host="0.0.0.0", token="s3cret")  # this machine's names
    assert TestClient(default, base_url=f"http://{socket.gethostname()}:8000").get(
        "/", headers=bearer).status_code == 200
    assert TestClient(default, base_url="http://rebound.example.com").get("/", headers=bearer).status_code == 400
    # a foreign Host is refused before the token is even looked at: no cookie for it
    refused = TestClient(default, base_url="http://rebound.example.com").get("/", params={"token": "s3cret"},
                                                                            follow_redirects=False)
    assert refused.status_code == 400 and "set-cookie" not in refused.headers
    over_ipv6 = create_app(enrolled.db, host="::", token="s3cret", allowed_hosts=["fd00::2"])
    assert TestClient(over_ipv6, base_url="http://127.0.0.1").get(
        "/", headers={**bearer, "Host": "[fd00::2]:8000"}).status_code == 200


def test_browse_refuses_an_open_address_without_a_token(run):
    result = run("browse", "--host", "0.0.0.0")
    assert result.exit_code == 2 and "needs a token" in result.output


def test_enrol_edit_and_curate_through_the_api(client):
    files = [("files", (p.name, p.read_bytes())) for p in
             (QUERIES / "never-enrolled-1.jpg", QUERIES / "never-enrolled-2.jpg")]
    made = client.post("/api/enrol", data={"specimen": "new-slide", "metadata": "stain = DAPI\nlab = 2"},
                       files=files, headers=SAME_SITE)
    assert made.json() == {"specimen": "new-slide", "enrolled": 2, "skipped": 0, "refused": [], "warnings": []}
    data = client.get("/api/specimens/new-slide").json()
    assert data["metadata"] == {"stain": "DAPI", "lab": "2"} and len(data["captures"]) == 2
    bad = client.post("/api/enrol", data={"specimen": "x"}, headers=SAME_SITE,
                      files=[("files", ("a.txt", b"hello"))])
    assert bad.status_code == 400 and "not an image" in bad.json()["refused"][0]
    assert client.post("/api/specimens/new-slide/edit", data={"metadata": "stain = H&E", "notes": "slide 7"},
                       headers=SAME_SITE).status_code == 200
    assert client.get("/api/specimens/new-slide").json()["notes"] == "slide 7"
    assert client.post("/api/specimens/new-slide/edit", data={"metadata": "no equals sign"},
                       headers=SAME_SITE).status_code == 400
    assert client.post("/api/specimens/new-slide/rename", data={"new_name": "slide-7"}, headers=SAME_SITE).status_code == 200
    capture = client.get("/api/specimens/slide-7").json()["captures"][0]["uuid"]
    assert client.post(f"/api/captures/{capture}/move", data={"to": "he-tissue-b"}, headers=SAME_SITE).status_code == 200
    assert client.post("/api/specimens/slide-7/merge", data={"into": "he-tissue-b"}, headers=SAME_SITE).json()["moved"] == 1
    assert len(client.get("/api/specimens/he-tissue-b").json()["captures"]) == 3
    assert client.get("/api/specimens/slide-7").status_code == 404
    # a cross-site form cannot do any of it
    assert client.post("/api/specimens/he-tissue-b/rename", data={"new_name": "pwned"},
                       headers={"Origin": "http://evil.example"}).status_code == 403


def test_review_and_add_a_query_as_reference(client):
    result = _upload(client, QUERIES / "recapture-brightfield-a.jpg", "/api/query").json()
    qid = result["query_id"]
    assert client.post(f"/api/queries/{qid}/review", data={"verdict": "confirmed", "reviewer": "ada"},
                       headers=SAME_SITE).status_code == 200
    assert client.get(f"/api/queries/{qid}").json()["review"]["verdict"] == "confirmed"
    assert client.post(f"/api/queries/{qid}/review", data={"verdict": "maybe", "reviewer": "ada"},
                       headers=SAME_SITE).status_code == 400
    added = client.post(f"/api/queries/{qid}/enrol", data={"specimen": "brightfield-a"}, headers=SAME_SITE)
    assert added.json() == {"specimen": "brightfield-a", "enrolled": 1}
    assert len(client.get("/api/specimens/brightfield-a").json()["captures"]) == 2


def test_specimen_page_states_its_calibration(client, enrolled, tmp_path):
    assert "the shipped default" in client.get("/specimens/he-tissue-a").text
    assert enrolled("calibrate", "--min-genuine", "10", "--fmr", "0.05", "--out", tmp_path).exit_code == 0
    data = client.get("/api/specimens/he-tissue-a").json()
    assert data["calibration"]["target_fmr"] == 0.05
    assert "calibrated for FMR 0.05" in client.get("/specimens/he-tissue-a").text


def test_upload_limit_holds_without_a_declared_length(enrolled):
    """A chunked upload that never says how long it is still stops at the limit."""
    client = TestClient(create_app(enrolled.db, max_upload=20_000), base_url="http://127.0.0.1")
    data = (QUERIES.parent / "specimens" / "he-tissue-a" / "capture-1.png").read_bytes()
    boundary = "specimenboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()

    def chunks():
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    response = client.post("/api/query", content=chunks(),
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413
    assert client.get("/api/history").json() == []


def test_hostile_form_and_query_values_get_clean_answers(client, enrolled):
    # thresholds outside 0..1 (and nan, inf) are refused before anything is logged
    for bad in ("inf", "nan", "-1", "2"):
        assert _upload(client, QUERIES / "recapture-he-tissue-a.jpg", f"/api/query?threshold={bad}").status_code == 422
    assert client.get("/api/history").json() == []
    # an upload named ".." is still just a file
    odd = client.post("/api/enrol", data={"specimen": "odd"}, headers=SAME_SITE,
                      files=[("files", ("..", (QUERIES / "never-enrolled-1.jpg").read_bytes()))])
    assert odd.status_code == 200 and odd.json()["enrolled"] == 1
    # names with slashes would make unreachable pages: refused everywhere
    slash = client.post("/api/enrol", data={"specimen": "box/1"}, headers=SAME_SITE,
                        files=[("files", ("a.jpg", (QUERIES / "never-enrolled-2.jpg").read_bytes()))])
    assert slash.status_code == 400 and "slash" in slash.json()["error"]
    assert client.post("/api/specimens/odd/rename", data={"new_name": "a/b"}, headers=SAME_SITE).status_code == 400
    assert enrolled("enroll", "-s", "c/d", QUERIES / "never-enrolled-2.jpg").exit_code == 1
    # a form with a field missing gets a page, not a JSON error
    missing = client.post("/specimens/odd/rename", data={}, headers=SAME_SITE)
    assert missing.status_code == 422 and "new_name" in missing.text and "<html" in missing.text
    assert client.get("/api/history", params={"limit": 10**20}).status_code == 422


def test_renames_and_merges_reach_past_results_and_keep_notes(client):
    result = _upload(client, QUERIES / "recapture-he-tissue-a.jpg", "/api/query").json()
    assert client.post("/api/specimens/he-tissue-a/edit", data={"metadata": "", "notes": "cracked"},
                       headers=SAME_SITE).status_code == 200
    client.post("/api/specimens/he-tissue-a/rename", data={"new_name": "slide-9"}, headers=SAME_SITE)
    past = client.get(f"/api/queries/{result['query_id']}").json()
    assert past["candidates"][0]["specimen"] == "slide-9"
    assert 'value="slide-9"' in client.get(f"/queries/{result['query_id']}").text
    client.post("/api/specimens/slide-9/merge", data={"into": " he-tissue-b "}, headers=SAME_SITE)
    assert client.get(f"/api/queries/{result['query_id']}").json()["candidates"][0]["specimen"] == "he-tissue-b"
    assert client.get("/api/specimens/he-tissue-b").json()["notes"] == "cracked"
    client.post(f"/api/queries/{result['query_id']}/review", data={"verdict": "confirmed", "reviewer": "Smith|J"},
                headers=SAME_SITE)
    assert client.get(f"/api/queries/{result['query_id']}").json()["review"]["reviewer"] == "Smith|J"


def test_a_non_ascii_token_is_refused_not_crashed(enrolled):
    client = TestClient(create_app(enrolled.db, host="0.0.0.0", token="s3cret", allowed_hosts=["10.1.2.3"]),
                        base_url="http://10.1.2.3")
    assert client.get("/", params={"token": "é"}).status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer \xe9".encode("latin-1")}).status_code == 401


def test_a_review_names_the_specimen_and_keeps_its_history(client):
    qid = _upload(client, QUERIES / "recapture-he-tissue-a.jpg", "/api/query").json()["query_id"]
    url = f"/api/queries/{qid}/review"
    assert client.post(url, data={"reviewer": "ada", "specimen": "he-tissue-a", "note": "label"},
                       headers=SAME_SITE).json()["specimen"] == "he-tissue-a"
    assert client.post(url, data={"reviewer": "bob", "none": "1"}, headers=SAME_SITE).json()["verdict"] == "none"
    # one answer at a time, and only a specimen that exists
    assert client.post(url, data={"reviewer": "bob", "none": "1", "specimen": "he-tissue-a"},
                       headers=SAME_SITE).status_code == 400
    assert client.post(url, data={"reviewer": "bob", "specimen": "no-such"}, headers=SAME_SITE).status_code == 404
    assert client.get(f"/api/queries/{qid}").json()["review"] == {
        **client.get(f"/api/queries/{qid}").json()["review"], "verdict": "none", "specimen": None, "reviewer": "bob"}
    page = client.get(f"/queries/{qid}").text
    assert "current:" in page and "shows none of those offered" in page and "shows he-tissue-a" in page


def test_this_one_names_the_specimen_that_holds_the_capture_not_a_name_taken_again(client, enrolled):
    """"This one" on a logged query sends the candidate's capture: a specimen purged since the
    query, whose name was given to a new specimen, is not the one the person saw."""
    qid = _upload(client, QUERIES / "recapture-he-tissue-a.jpg", "/api/query").json()["query_id"]
    shown = client.get(f"/api/queries/{qid}").json()["candidates"]
    first, other = shown[0], next(c for c in shown if c["specimen"] != shown[0]["specimen"])
    assert first["specimen"] == "he-tissue-a"
    page = html.unescape(client.get(f"/queries/{qid}").text)
    assert f'name="capture" value="{first["capture"]}"' in page  # what the "this one" button sends
    url = f"/api/queries/{qid}/review"
    assert client.post(url, data={"reviewer": "ada", "capture": first["capture"]},
                       headers=SAME_SITE).json()["specimen"] == "he-tissue-a"
    # he-tissue-a removed and purged; its name taken by a new specimen of other pixels
    assert enrolled("remove", "he-tissue-a").exit_code == 0 and enrolled("purge", "he-tissue-a").exit_code == 0
    assert enrolled("enroll", "-s", "he-tissue-a", QUERIES / "never-enrolled-1.jpg").exit_code == 0
    refused = client.post(url, data={"reviewer": "ada", "capture": first["capture"]}, headers=SAME_SITE)
    assert refused.status_code == 404 and refused.json()["error"] == (
        f"the capture {first['capture']} is no longer enrolled: its specimen was removed or purged since; "
        "review the query with the specimen's name, or as none of these")
    assert client.get(f"/api/queries/{qid}").json()["review"]["specimen"] is None  # (purged with it)
    unknown = client.post(url, data={"reviewer": "ada", "capture": "0" * 32}, headers=SAME_SITE)
    assert unknown.status_code == 404 and unknown.json()["error"] == f"no capture {'0' * 32} in this database"
    # a capture moved to another specimen since: the review names the one that holds it now, and
    # calibration still counts that candidate's score as the genuine one
    assert enrolled("move", other["capture"], "he-tissue-a").exit_code == 0
    assert client.post(url, data={"reviewer": "ada", "capture": other["capture"]},
                       headers=SAME_SITE).json()["specimen"] == "he-tissue-a"
    with Database(enrolled.db) as db:
        (review,) = [r for r in db.reviewed(SCORE_KIND) if r["capture"] == other["capture"]]
    genuine, impostor = reviewed_pairs(review)
    assert genuine == [other["score"]] and other["score"] not in impostor


def test_the_query_page_redirects_to_its_result_and_shows_its_warnings(client):
    posted = _upload(client, DATA / "quality" / "blurred-field.png", follow_redirects=False)
    assert posted.status_code == 303 and posted.headers["location"].startswith("/queries/")
    qid = posted.headers["location"].rsplit("/", 1)[1]
    shown = html.unescape(client.get(posted.headers["location"]).text)
    logged = client.get(f"/api/queries/{qid}").json()
    assert logged["warnings"] and all(w in shown for w in logged["warnings"])
    assert "blurred-field.png" in shown and "a logged result" in shown
    assert len(client.get("/api/history").json()) == 1  # opening it again asked nothing again
    client.get(posted.headers["location"])
    assert len(client.get("/api/history").json()) == 1


def test_the_threshold_is_decided_again_by_the_server(client):
    result = _upload(client, QUERIES / "recapture-he-tissue-b.jpg", "/api/query").json()
    qid = result["query_id"]
    at_logged = client.get(f"/api/queries/{qid}/decide", params={"threshold": result["threshold"]}).json()
    assert (at_logged["decision"], at_logged["specimen"]) == (result["decision"], result["specimen"]) == (
        "match", "he-tissue-b")
    strict = client.get(f"/api/queries/{qid}/decide", params={"threshold": 1}).json()
    assert (strict["decision"], strict["specimen"], strict["clearing"]) == ("no_match", None, [])
    assert client.get(f"/api/queries/{qid}/decide", params={"threshold": 2}).status_code == 422
    assert client.get("/favicon.svg").headers["content-type"].startswith("image/svg+xml")


def test_filing_pages_ask_first_whatever_names_the_target(client):
    """Merge and move ask once more even when the target is given by its uuid (the store takes
    either); a move to where the capture already is, is refused."""
    target = client.get("/api/specimens/he-tissue-b").json()
    asked = client.post("/specimens/he-tissue-a/merge", data={"into": target["uuid"]}, headers=SAME_SITE)
    assert asked.status_code == 200 and "Merge he-tissue-a" in asked.text and "into he-tissue-b" in asked.text
    assert client.get("/api/specimens/he-tissue-a").status_code == 200  # nothing merged yet
    capture = client.get("/api/specimens/he-tissue-a").json()["captures"][0]["uuid"]
    asked = client.post(f"/captures/{capture}/move", data={"to": target["uuid"]}, headers=SAME_SITE)
    assert asked.status_code == 200 and "from he-tissue-a to he-tissue-b" in asked.text
    same = client.post(f"/api/captures/{capture}/move", data={"to": "he-tissue-a"}, headers=SAME_SITE)
    assert same.status_code == 400 and "already" in same.json()["error"]
    unknown = client.post("/api/captures/no-such-capture/move", data={"to": "he-tissue-a"}, headers=SAME_SITE)
    assert unknown.status_code == 400 and "no capture" in unknown.json()["error"]


def test_a_logged_result_shows_its_exact_copies_and_keeps_its_margin(client, enrolled):
    enrolled_file = SPECIMENS / "he-tissue-a" / "capture-1.png"
    qid = _upload(client, enrolled_file, "/api/query").json()["query_id"]
    assert client.get(f"/api/queries/{qid}").json()["exact"][0]["same"] == "file"
    assert "same file as capture" in client.get(f"/queries/{qid}").text
    margin = client.get(f"/api/queries/{qid}").json()["margin"]
    assert enrolled("config", "margin", "0.3").exit_code == 0
    assert client.get(f"/api/queries/{qid}").json()["margin"] == margin  # as it was answered
