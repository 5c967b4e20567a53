"""Specimen names that would garble a terminal or a web address are refused wherever a name
comes in (CLI, CSV, web); what came from a user or a file is printed with its control
characters made visible; names stored before the rule are named by verify and renamed by uuid."""

import json
import sqlite3

import pytest
from conftest import QUERIES, SPECIMENS
from fastapi.testclient import TestClient

from specimen_id.web import create_app

SAME_SITE = {"Origin": "http://127.0.0.1"}
BAD_NAMES = {"line\nbreak": "control characters", "osc\x1b]0;owned\x07": "control characters",
             "tab\there": "control characters", "bidi\u202eevil": "control characters",
             "x" * 201: "at most 200 characters", ".": "not reachable", "..": "not reachable",
             "a/b": "slashes"}
CAPTURE = SPECIMENS / "he-tissue-a" / "capture-1.png"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_cli_refuses_a_bad_name_in_one_visible_line(run, name):
    result = run("enroll", "-s", name, CAPTURE)
    assert result.exit_code == 1
    refused = [line for line in result.output.splitlines() if line.startswith("refused: ")]
    assert len(refused) == 1 and BAD_NAMES[name] in refused[0]
    assert "\x1b" not in result.output and "\u202e" not in result.output and "\x07" not in result.output
    assert run("list").output == ""


def test_rename_and_csv_refuse_bad_names(enrolled, tmp_path):
    result = enrolled("rename", "he-tissue-a", "new\nname")
    assert result.exit_code == 1 and "control characters" in result.output
    sheet = tmp_path / "names.csv"
    uuid = json.loads(enrolled("show", "he-tissue-a", "--json").output)["uuid"]
    sheet.write_text(f'uuid,name\n{uuid},"new\nname"\n', newline="")
    result = enrolled("import-csv", sheet)
    assert "control characters" in result.output and "updated 0" in result.output
    assert "he-tissue-a" in enrolled("list").output.splitlines()


def _multipart(field: str, filename: bytes, data: bytes) -> bytes:
    """A form with the specimen `web-new` and one file, its name sent raw (httpx would
    percent-encode a NUL)."""
    return (b'--b0undary\r\nContent-Disposition: form-data; name="specimen"\r\n\r\nweb-new\r\n'
            b'--b0undary\r\nContent-Disposition: form-data; name="' + field.encode() + b'"; filename="'
            + filename + b'"\r\nContent-Type: image/png\r\n\r\n' + data + b"\r\n--b0undary--\r\n")


def test_the_web_refuses_bad_names_and_unusable_upload_names(enrolled):
    client = TestClient(create_app(enrolled.db), base_url="http://127.0.0.1")
    for name in ("osc\x1b]0;owned\x07", "..", "y" * 300):
        reply = client.post("/api/enrol", data={"specimen": name}, headers=SAME_SITE,
                            files={"files": ("a.png", CAPTURE.read_bytes())})
        assert reply.status_code == 400 and BAD_NAMES.get(name, "at most 200") in reply.json()["error"]
    rename = client.post("/api/specimens/he-tissue-a/rename", data={"new_name": "a\nb"}, headers=SAME_SITE)
    assert rename.status_code == 400
    for filename in (b"n" * 252 + b".png", b"nul\x00.png"):  # as a browser may send them
        for url, field in (("/api/enrol", "files"), ("/api/query", "file")):
            reply = client.post(url, content=_multipart(field, filename, CAPTURE.read_bytes()),
                                headers={**SAME_SITE, "Content-Type": "multipart/form-data; boundary=b0undary"})
            assert reply.status_code == 400, (url, filename, reply.text)
            assert "rename the file" in reply.json()["error"]
    assert "web-new" not in enrolled("list").output.splitlines()


def test_names_metadata_and_paths_reach_the_terminal_escaped(enrolled, tmp_path):
    hostile = tmp_path / "q\x1b[2J\x1b]0;owned\x07.jpg"
    hostile.write_bytes((QUERIES / "recapture-he-tissue-a.jpg").read_bytes())
    result = enrolled("query", hostile)
    assert result.exit_code == 0 and "he-tissue-a" in result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "q\\x1b[2J" in result.output
    assert enrolled("enroll", "-s", "he-tissue-a", "--meta", "note=\x1b[31mred\u202e", CAPTURE).exit_code == 0
    shown = enrolled("show", "he-tissue-a").output
    assert "note = \\x1b[31mred\\u202e" in shown and "\x1b" not in shown


def test_a_name_stored_before_the_rule_is_reported_and_renamed_by_uuid(enrolled):
    conn = sqlite3.connect(enrolled.db / "specimens.sqlite")  # a database from an older version
    with conn:
        conn.execute("UPDATE specimens SET name = ? WHERE name = 'he-tissue-a'", ["old\nname\x1b[31m"])
        uuid = conn.execute("SELECT uuid FROM specimens WHERE name LIKE 'old%'").fetchone()[0]
    conn.close()
    listed = enrolled("list").output.splitlines()
    assert "old\\x0aname\\x1b[31m" in listed and "old" not in listed  # one line, nothing sent to the terminal
    result = enrolled("verify")
    assert result.exit_code == 1
    assert f"specimen {uuid}: specimen names cannot contain control characters" in result.output
    assert f"`specimen-id rename {uuid} NEW_NAME`" in result.output
    assert enrolled("rename", uuid, "he-tissue-a").exit_code == 0
    assert enrolled("verify").exit_code == 0 and "he-tissue-a" in enrolled("list").output.splitlines()
    answer = enrolled("query", QUERIES / "recapture-he-tissue-a.jpg").output
    assert "he-tissue-a" in answer
