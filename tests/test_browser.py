"""The browse pages in a real headless Chromium (Debian's, driven by Playwright): what a person
at the microscope sees and clicks."""

import os
import shutil
from pathlib import Path

import pytest
from conftest import DATA, QUERIES, serving
from playwright.sync_api import expect, sync_playwright

from specimen_id.web import create_app

CHROMIUM = "/usr/bin/chromium"
# An image's width once it has loaded (0 if it failed): reading naturalWidth at once races
# the browser, which may still be fetching it when the <img> is already in the page.
LOADED_WIDTH = ("img => img.complete ? img.naturalWidth : new Promise(done => {"
                " img.addEventListener('load', () => done(img.naturalWidth));"
                " img.addEventListener('error', () => done(0)); })")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run"]


@pytest.fixture
def server(enrolled):
    with serving(create_app(enrolled.db)) as port:
        yield f"http://127.0.0.1:{port}"


DESKTOP, PHONE = {"width": 1366, "height": 900}, {"width": 390, "height": 844}


@pytest.fixture(params=[DESKTOP, PHONE], ids=["desktop", "phone"])
def page(request):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser.new_page(viewport=request.param)
        browser.close()


def _fits(page) -> None:
    """Readable at the page's width: nothing wider than the screen, text at a readable size."""
    width = page.viewport_size["width"]
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    assert page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)") >= 14


def test_browse_specimens_and_open_one(server, page):
    page.goto(server)
    expect(page.locator("#specimens .name")).to_have_count(6)
    page.get_by_text("he-tissue-a").click()
    expect(page.locator("h1")).to_have_text("he-tissue-a")
    expect(page.locator("main img")).to_have_count(2)
    assert page.locator("main img").first.evaluate(LOADED_WIDTH) > 0


def test_query_by_upload_then_move_the_threshold(server, page, tmp_path):
    page.goto(server + "/query")
    page.set_input_files("input[name=file]", str(QUERIES / "recapture-fluo-nuclei-b.jpg"))
    page.get_by_role("button", name="Identify", exact=True).click()
    expect(page.locator("#decision-text")).to_have_text("match")
    expect(page.locator("#specimen")).to_have_text("fluo-nuclei-b")
    expect(page.locator(".candidate").first).to_contain_text("fluo-nuclei-b")
    # query and best candidate side by side, both loaded
    pair = page.locator(".candidate").first.locator(".pair img")
    expect(pair).to_have_count(2)
    assert all(pair.nth(i).evaluate(LOADED_WIDTH) > 0 for i in range(2))
    # a compact list: the whole result within about two screens, at either width
    assert page.evaluate("document.documentElement.scrollHeight") < 2 * 900
    _fits(page)
    shot = tmp_path / "query-page.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    if os.environ.get("SPECIMEN_ID_SCREENSHOTS"):  # how the README's pictures are made, when asked
        phone = page.viewport_size["width"] < 600
        shutil.copy(shot, Path(os.environ["SPECIMEN_ID_SCREENSHOTS"]) / f"query-page{'-phone' if phone else ''}.png")
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
    page.get_by_role("button", name="Identify", exact=True).click()
    expect(page.locator("#error")).to_contain_text("not an image")
    page.goto(server + "/history")
    expect(page.locator("#history")).to_contain_text("No queries yet.")


def test_enrol_through_the_page_then_edit_and_rename(server, page):
    page.goto(server + "/enrol")
    page.get_by_label("Specimen (new or existing)").fill("new-slide")
    page.get_by_label("Captures", exact=True).set_input_files([str(QUERIES / "never-enrolled-1.jpg"),
                                                   str(QUERIES / "never-enrolled-2.jpg")])
    page.get_by_label("Metadata, one key = value per line").fill("stain = DAPI")
    page.get_by_role("button", name="Enrol").click()
    expect(page.locator("h1")).to_have_text("new-slide")
    expect(page.locator("main .card img")).to_have_count(2)
    expect(page.locator("#metadata")).to_contain_text("DAPI")
    _fits(page)
    page.get_by_text("Edit metadata and notes").click()
    page.get_by_label("Notes").fill("found in drawer 3")
    page.get_by_label("Metadata, one key = value per line").fill("stain DAPI")  # no `=`
    page.locator("#edit button").click()
    expect(page.locator("#problem")).to_contain_text("key = value")  # said beside the form,
    expect(page.get_by_label("Notes")).to_have_value("found in drawer 3")  # what was typed kept
    page.get_by_label("Metadata, one key = value per line").fill("stain = DAPI")
    page.locator("#edit button").click()
    expect(page.locator("#notes")).to_have_text("found in drawer 3")
    page.get_by_text("Rename, merge or remove").click()
    page.get_by_label("New name").fill("slide-7")
    page.locator("#rename button").click()
    expect(page.locator("h1")).to_have_text("slide-7")
    # move one capture away: asked once more, then done; the move shows on both pages
    page.locator(".move input").first.fill("he-tissue-b")
    page.locator(".move button").first.click()
    expect(page.locator("#question")).to_contain_text("from slide-7 to he-tissue-b")
    page.get_by_role("button", name="Yes, do it").click()
    expect(page.locator("h1")).to_have_text("he-tissue-b")
    expect(page.locator("main .card img")).to_have_count(2)
    expect(page.locator("#audit")).to_contain_text("from slide-7 to he-tissue-b")
    page.goto(server + "/specimens/slide-7")
    expect(page.locator("#audit")).to_contain_text("from slide-7 to he-tissue-b")
    # a mistyped merge target is refused beside the form, with the names to pick from
    page.get_by_text("Rename, merge or remove").click()
    page.get_by_label("Merge into").fill("he-tisue-b")
    page.locator("#merge button").click()
    expect(page.locator("#problem")).to_contain_text("he-tisue-b")
    expect(page.get_by_label("Merge into")).to_have_value("he-tisue-b")
    assert "he-tissue-b" in page.locator("#specimen-names option").evaluate_all("os => os.map(o => o.value)")
    page.get_by_label("Merge into").fill("he-tissue-b")
    page.locator("#merge button").click()
    expect(page.locator("#question")).to_contain_text("Merge slide-7 (1 capture(s)) into he-tissue-b (2 capture(s))")
    page.get_by_role("button", name="Yes, do it").click()
    expect(page.locator("main .card img")).to_have_count(3)
    page.goto(server)
    expect(page.locator("#specimens")).not_to_contain_text("slide-7")


def test_remove_and_restore_and_an_emptied_specimen(server, page):
    page.goto(server + "/specimens/brightfield-a")
    page.locator(".move input").first.fill("he-tissue-a")
    page.locator(".move button").first.click()
    page.get_by_role("button", name="Yes, do it").click()
    page.goto(server)
    expect(page.locator("#specimens")).not_to_contain_text("brightfield-a")
    expect(page.locator("#empty")).to_contain_text("brightfield-a")  # listed apart, to be removed
    page.goto(server + "/specimens/he-tissue-a")
    page.get_by_text("Rename, merge or remove").click()
    page.get_by_role("button", name="Remove…").click()
    expect(page.locator("#question")).to_contain_text("Remove he-tissue-a and its 3 capture(s)?")
    page.get_by_role("link", name="No, go back").click()
    expect(page.locator("h1")).to_have_text("he-tissue-a")  # nothing removed
    page.get_by_text("Rename, merge or remove").click()
    page.get_by_role("button", name="Remove…").click()
    page.get_by_role("button", name="Yes, do it").click()
    expect(page.locator("#specimens")).not_to_contain_text("he-tissue-a")
    expect(page.locator("#removed")).to_contain_text("he-tissue-a")
    page.locator("#removed").get_by_role("button", name="Restore").click()
    expect(page.locator("h1")).to_have_text("he-tissue-a")
    expect(page.locator("main .card img")).to_have_count(3)
    _fits(page)


def test_a_partly_refused_enrolment_keeps_the_form(server, page, tmp_path):
    junk = tmp_path / "label.jpg"
    junk.write_text("a photo of the slide's label, as text")
    page.goto(server + "/enrol")
    page.get_by_label("Specimen (new or existing)").fill("slide-9")
    page.get_by_label("Captures", exact=True).set_input_files([str(QUERIES / "never-enrolled-1.jpg"), str(junk)])
    page.get_by_label("Metadata, one key = value per line").fill("stain = H&E")
    page.get_by_role("button", name="Enrol").click()
    expect(page.locator("#report")).to_contain_text("1 enrolled")
    expect(page.locator("#report")).to_contain_text("label.jpg")
    expect(page.locator("#report")).to_have_class("notice")  # a partial success, not an error
    expect(page.locator("#report")).not_to_contain_text("quality limits")  # advice for another refusal
    expect(page.get_by_label("Specimen (new or existing)")).to_have_value("slide-9")
    expect(page.get_by_label("Metadata, one key = value per line")).to_have_value("stain = H&E")
    _fits(page)


def test_review_an_ambiguous_result_naming_the_specimen(server, page, enrolled):
    # the same field enrolled under a second name makes its re-capture ambiguous
    from specimen_id.store import Database

    assert enrolled("enroll", "-s", "fluo-b-again", "--allow-duplicate",
                    QUERIES.parent / "specimens" / "fluo-nuclei-b" / "capture-1.png").exit_code == 0
    page.goto(server + "/query")
    page.set_input_files("input[name=file]", str(QUERIES / "recapture-fluo-nuclei-b.jpg"))
    page.get_by_role("button", name="Identify", exact=True).click()
    expect(page.locator("#decision-text")).to_have_text("ambiguous")
    expect(page.locator("#contenders")).to_contain_text("fluo-nuclei-b")
    expect(page.locator("#contenders")).to_contain_text("fluo-b-again")
    expect(page.locator("#reference-name")).to_have_value("")  # no filing target chosen for the user
    _fits(page)
    page.goto(server + "/history")
    expect(page.locator("#pending")).to_contain_text("recapture-fluo-nuclei-b.jpg")
    page.locator("#pending a").first.click()
    page.fill("#reviewer", "ada")
    page.fill("#note", "the slide's label says B")
    page.locator("#reviewer").press("Enter")  # Enter in a box files nothing
    page.locator("#reference-name").fill("fluo-nuclei-b")
    page.locator("#reference-name").press("Enter")
    expect(page.locator("h1")).to_have_text("Query")  # not gone off to enrol it
    expect(page.locator("#review-box .review")).to_have_count(0)
    page.get_by_role("button", name="this one: fluo-nuclei-b").click()
    expect(page.locator("#review-box .review").first).to_contain_text("shows fluo-nuclei-b")
    expect(page.locator("#review-box .review").first).to_contain_text("by ada")
    expect(page.locator("#reviewer")).to_have_value("ada")  # remembered in this browser
    page.goto(server + "/history")
    expect(page.locator("#pending")).to_have_count(0)
    expect(page.locator("#history")).to_contain_text("shows fluo-nuclei-b by ada")
    with Database(enrolled.db) as db:
        assert len(db.captures(db.specimen("fluo-nuclei-b")["id"])) == 1  # Enter enrolled nothing
        (review,) = db.reviews_of(db.queries(1)[0]["uuid"])
        assert (review["verdict"], review["specimen"], review["note"]) == ("specimen", "fluo-nuclei-b",
                                                                           "the slide's label says B")


def test_a_no_match_offers_a_new_specimen_and_the_slider_asks_the_server(server, page):
    page.goto(server + "/query")
    page.set_input_files("input[name=file]", str(QUERIES / "never-enrolled-1.jpg"))
    page.get_by_role("button", name="Identify", exact=True).click()
    expect(page.locator("#decision-text")).to_have_text("no_match")
    assert "/queries/" in page.url  # the result has an address of its own: reloading re-asks nothing
    expect(page.locator("#reference-name")).to_have_value("")
    expect(page.locator("#reference-name")).to_have_attribute("placeholder", "a new specimen, or pick one")
    page.reload()
    expect(page.locator("#past")).to_contain_text("never-enrolled-1.jpg")
    page.goto(server + "/history")
    expect(page.locator("#history tr")).to_have_count(2)  # a header and the one query
    page.locator("#history a").first.click()
    page.locator("#threshold").fill("0")
    expect(page.locator("#decision-text")).not_to_have_text("no_match")
    expect(page.locator(".candidate.below")).to_have_count(0)
    page.locator("#threshold").fill("1")
    expect(page.locator("#decision-text")).to_have_text("no_match")
    expect(page.locator("#specimen")).to_have_count(0)  # no name beside no_match
    expect(page.locator(".candidate.below")).to_have_count(page.locator(".candidate").count())
    _fits(page)


def test_every_page_is_labelled_titled_and_announces_its_decision(server, page):
    """Each input has a label, each page a title of its own, decisions are announced to a
    screen reader, the favicon is there, and a low-quality query's warnings show."""
    page.goto(server + "/query")
    page.get_by_label("Capture to identify").set_input_files(str(DATA / "quality" / "blurred-field.png"))
    page.get_by_role("button", name="Identify", exact=True).click()
    expect(page.locator(".warning").first).to_contain_text("refocus")
    assert page.locator("#decision").evaluate("d => d.closest('[aria-live]') !== null")
    result_url = page.url
    titles = set()
    for path in ("/", "/query", "/enrol", "/history", "/specimens/he-tissue-a", result_url.removeprefix(server)):
        page.goto(server + path)
        titles.add(page.title())
        unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, textarea, select')]
            .filter(e => e.type !== 'hidden' && !e.hidden && !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
            .map(e => e.outerHTML)""")
        assert unlabelled == [], (path, unlabelled)
        assert page.evaluate("[...document.images].filter(i => !i.alt).length") == 0, path
        _fits(page)
    assert len(titles) == 6
    assert page.request.get(server + "/favicon.svg").ok


def test_a_low_quality_capture_is_refused_with_the_page_s_way_out(server, page):
    page.goto(server + "/enrol")
    page.get_by_label("Specimen (new or existing)").fill("soft-slide")
    page.get_by_label("Captures", exact=True).set_input_files(str(DATA / "quality" / "blurred-field.png"))
    page.get_by_role("button", name="Enrol").click()
    expect(page.locator("#report")).to_contain_text("Enrol captures below the quality limits anyway")
    expect(page.locator("#report")).not_to_contain_text("--allow-low-quality")
    page.get_by_label("Captures", exact=True).set_input_files(str(DATA / "quality" / "blurred-field.png"))
    page.get_by_label("Enrol captures below the quality limits anyway").check()
    page.get_by_role("button", name="Enrol").click()
    expect(page.locator("h1")).to_have_text("soft-slide")


def test_a_neighbouring_field_is_shown_as_an_overlap(run, page):
    """A window a third of a field off an enrolled tile: matched to the tile it mostly shows,
    with the neighbouring tile named as an overlap, not a rival (real confocal tiles)."""
    for name in ("tile-a07", "tile-a06"):
        assert run("enroll", "-s", name, DATA / "real" / f"{name}.png").exit_code == 0
    with serving(create_app(run.db)) as port:
        page.goto(f"http://127.0.0.1:{port}/query")
        page.get_by_label("Capture to identify").set_input_files(str(DATA / "real" / "tile-a07-shifted-right.png"))
        page.get_by_role("button", name="Identify", exact=True).click()
        expect(page.locator("#specimen")).to_have_text("tile-a07")
        expect(page.locator(".overlap")).to_contain_text("overlaps tile-a06")
        expect(page.locator(".candidate").first).to_contain_text("of the query in its field")
        _fits(page)
