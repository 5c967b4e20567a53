"""CSV for lab information systems: awkward text survives a round trip, formulas are defused,
rows update specimens by uuid or name, bad rows are reported by line and the rest go on."""

import csv
import io
import json

import pytest
from conftest import SPECIMENS

from specimen_id.store import Database

AWKWARD = {"stain": 'H&E, "special"', "origin": "Zürich\nlab 2 — ünïcode ✓", "dose": "-5",
           "formula": "=HYPERLINK(\"http://evil\",\"x\")", "at": "@SUM(A1)", "plus": "+1",
           "quote": "'already quoted"}


@pytest.fixture
def two(run):
    assert run("enroll", "-s", "slide, 1", SPECIMENS / "he-tissue-a" / "capture-1.png",
               *[f"--meta={k}={v}" for k, v in AWKWARD.items()]).exit_code == 0
    assert run("enroll", "-s", "=SUM(1,2)", SPECIMENS / "fluo-nuclei-b" / "capture-1.png").exit_code == 0
    Database(run.db).edit_specimen("slide, 1", AWKWARD, 'notes with "quotes",\ncommas and a\r\nnewline')
    return run


def _read(path):
    return list(csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8-sig"), newline="")))


def _write(path, rows):
    out = io.StringIO(newline="")
    csv.writer(out).writerows(rows)
    path.write_bytes(out.getvalue().encode("utf-8"))


def test_export_is_safe_for_spreadsheets_and_round_trips(two, tmp_path):
    out = tmp_path / "specimens.csv"
    result = two("export-csv", out)
    assert result.exit_code == 0 and "wrote 2 specimen(s)" in result.stdout
    assert out.read_bytes().startswith(b"\xef\xbb\xbf")  # UTF-8 BOM: Excel reads the unicode
    rows = _read(out)
    assert list(rows[0])[:5] == ["uuid", "name", "notes", "created_at", "captures"]
    assert sorted(k for k in rows[0] if k.startswith("meta:")) == sorted(f"meta:{k}" for k in AWKWARD)
    by_name = {r["name"]: r for r in rows}
    slide = by_name["slide, 1"]
    assert slide["captures"] == "1" and slide["notes"] == 'notes with "quotes",\ncommas and a\r\nnewline'
    assert slide["meta:stain"] == AWKWARD["stain"] and slide["meta:origin"] == AWKWARD["origin"]
    # no cell a spreadsheet would run as a formula
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@")), cell
    assert slide["meta:formula"] == "'" + AWKWARD["formula"] and slide["meta:dose"] == "'-5"
    assert slide["meta:quote"] == "''already quoted"
    assert "'=SUM(1,2)" in by_name
    # importing the export unchanged changes nothing and adds no audit row
    trail = len(two("audit", "--json").stdout.splitlines())
    again = two("import-csv", out)
    assert again.exit_code == 0 and "updated 0, unchanged 2, skipped 0" in again.stdout
    assert len(two("audit", "--json").stdout.splitlines()) == trail
    db = Database(two.db)
    assert db.specimen("slide, 1")["metadata"] == AWKWARD
    assert db.specimen("=SUM(1,2)")["metadata"] == {}


def test_import_updates_by_uuid_or_name_and_reports_bad_rows_by_line(two, tmp_path):
    db = Database(two.db)
    slide = db.specimen("slide, 1")
    two("enroll", "-s", "gone", SPECIMENS / "brightfield-a" / "capture-1.png")
    two("remove", "gone")
    rows = [["uuid", "name", "notes", "meta:stain", "meta:origin", "meta:new key"],
            [slide["uuid"], "slide 1 (renamed)", "multi\nline, note", "=1+1", "", "Ωmega"],  # lines 2-3
            ["", "=SUM(1,2)", "by name", "'=protected", "x", ""],  # line 4
            ["00000000-0000-0000-0000-000000000000", "whoever", "", "", "", ""],  # 5: unknown uuid
            ["", "nobody", "", "", "", ""],  # 6: unknown name
            ["", "gone", "", "", "", ""],  # 7: removed
            ["", "slide 1 (renamed)", "too", "few"],  # 8: wrong cell count
            ["", "=SUM(1,2)", "", "", "", "", ""],  # 9: too many
            [slide["uuid"], "a/b", "", "", "", ""]]  # 10: a name with a slash
    path = tmp_path / "lims.csv"
    _write(path, rows)
    result = two("import-csv", path, env={"SPECIMEN_ID_USER": "lims-sync"})
    assert result.exit_code == 1
    assert "updated 2, unchanged 0, skipped 6 row(s)" in result.stdout
    problems = result.stderr.splitlines()
    assert [p.split(": ")[2] for p in problems] == [f"line {n}" for n in (5, 6, 7, 8, 9, 10)]
    assert all(p.startswith(f"skipped: {path}: line ") for p in problems)
    assert "no specimen with uuid 00000000" in problems[0] and "no specimen named 'nobody'" in problems[1]
    assert "was removed" in problems[2] and "4 cells, the header has 6" in problems[3]
    assert "slashes" in problems[5]

    db = Database(two.db)
    renamed = db.specimen("slide 1 (renamed)")
    assert renamed["uuid"] == slide["uuid"] and renamed["notes"] == "multi\nline, note"
    # cells are text: "=1+1" is stored as written, "'=protected" loses the apostrophe export adds
    expected = {**AWKWARD, "stain": "=1+1", "new key": "Ωmega"}
    del expected["origin"]  # an empty cell removes the key; keys without a column stay
    assert renamed["metadata"] == expected
    other = db.specimen("=SUM(1,2)")
    assert other["notes"] == "by name" and other["metadata"] == {"stain": "=protected", "origin": "x"}
    # the first bad row did not stop the rest, and row 10 (same uuid) left row 2's change intact
    trail = [json.loads(line) for line in two("audit", "--json", "--limit", "3").stdout.splitlines()]
    assert [r["action"] for r in trail] == ["edit", "edit", "rename"]
    assert {r["user"] for r in trail} == {"lims-sync"} and {r["client"] for r in trail} == {"import-csv lims.csv"}


def test_a_file_that_is_not_a_specimen_table_is_refused_whole(two, tmp_path):
    bad_header = tmp_path / "bad.csv"
    _write(bad_header, [["uuid", "colour"], ["x", "red"]])
    result = two("import-csv", bad_header)
    assert result.exit_code == 1 and f"{bad_header}: line 1:" in result.stderr
    latin = tmp_path / "latin.csv"
    latin.write_bytes("name,notes\nslide\xe9,x\n".encode("latin-1"))
    result = two("import-csv", latin)
    assert result.exit_code == 1 and f"{latin}: not UTF-8" in result.stderr
    assert Database(two.db).specimen("slide, 1")["notes"].startswith("notes with")


def test_round_trip_keeps_metadata_types_from_the_python_api(two, tmp_path):
    """Numbers, true/false and null set through the Python API come back as they were (the
    CSV holds them as JSON text); an edited cell becomes the text typed."""
    from specimen_id import export_csv, import_csv

    db = Database(two.db)
    typed = {"magnification": 40, "fixed": True, "stain": None, "note": "", "ratio": 0.5}
    db.edit_specimen("=SUM(1,2)", typed, "")
    export_csv(db, tmp_path / "s.csv")
    report = import_csv(db, tmp_path / "s.csv")
    assert (report.updated, report.unchanged, report.problems) == ([], 2, [])
    assert db.specimen("=SUM(1,2)")["metadata"] == typed
    rows = _read(tmp_path / "s.csv")
    (row,) = [r for r in rows if r["meta:magnification"] == "40"]
    row["meta:magnification"] = "63"
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    (tmp_path / "s.csv").write_text(out.getvalue(), encoding="utf-8")
    import_csv(db, tmp_path / "s.csv")
    assert db.specimen("=SUM(1,2)")["metadata"] == {**typed, "magnification": "63"}
