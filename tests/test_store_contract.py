"""The storage contract: what every backend must do, spoken only through the protocols of
store/__init__.py (Catalog, VectorIndex, Blobs behind one Store). Each test runs against every
backend in BACKENDS_UNDER_TEST; a new backend joins by adding its opener there."""

from __future__ import annotations

import hashlib
import inspect
import threading

import numpy as np
import pytest

from specimen_id.errors import DatabaseUnusable, SpecimenIdError, UnknownSpecimen
from specimen_id.store import Blobs, CaptureRecord, Catalog, Hit, Store, VectorIndex, open_store

DIM = 16
MODEL = "contract-model"
FEATURES = "contract-features"


def _directory(request):
    return request.getfixturevalue("tmp_path") / "db"


def _postgresql(request):
    return request.getfixturevalue("pg_url")  # a new database on the session's server


BACKENDS_UNDER_TEST = {"directory": _directory, "postgresql": _postgresql}


@pytest.fixture(params=sorted(BACKENDS_UNDER_TEST))
def location(request):
    return BACKENDS_UNDER_TEST[request.param](request)


@pytest.fixture
def store(location):
    with open_store(location) as opened:
        yield opened


def _unit(rng, n):
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _records(store, specimen, vectors, tag=""):
    out = []
    for i, v in enumerate(vectors):
        data = f"{specimen}-{tag}{i}".encode()
        sha = hashlib.sha256(data).hexdigest()
        out.append(CaptureRecord(specimen=specimen, data=data, extension="bin", file_sha256=sha,
                                 pixel_sha256=sha, original_name=f"{specimen}-{i}.png", format="PNG", width=8,
                                 height=8, dtype="uint8", channels=3, vector=v, features=f"f{i}".encode()))
    return out


def _enrolled(store, rng, specimens=("alpha", "beta", "gamma"), each=2):
    vectors, ids = {}, {}
    for name in specimens:
        vectors[name] = _unit(rng, each)
        ids[name] = store.add_captures(_records(store, name, vectors[name]), MODEL, FEATURES)
    return vectors, ids


def test_the_store_offers_every_method_of_the_protocols_as_they_are_called(store):
    for protocol, offered in ((Catalog, store), (Store, store), (VectorIndex, store.vectors), (Blobs, store.blobs)):
        for name, member in vars(protocol).items():
            if name.startswith("_") or not callable(member):
                continue
            wanted = list(inspect.signature(member).parameters)[1:]  # without self
            assert callable(getattr(offered, name, None)), f"{protocol.__name__}.{name} is missing"
            assert list(inspect.signature(getattr(offered, name)).parameters)[:len(wanted)] == wanted, name


def test_blobs_are_kept_by_content_read_back_and_deleted(store):
    data = b"\x89PNG a capture's bytes"
    sha = hashlib.sha256(data).hexdigest()
    key = store.blobs.put(data, sha, "png")
    assert store.blobs.put(data, sha, "png") == key  # once per content
    assert store.blobs.read(key) == data and store.blobs.file(key).read_bytes() == data
    assert store.blobs.delete(key) is True
    with pytest.raises(FileNotFoundError):
        store.blobs.read(key)
    assert store.blobs.delete(key) is False  # it says what it held


def test_added_captures_are_found_by_their_vectors_best_first_without_padding(store):
    rng = np.random.default_rng(1)
    vectors, ids = _enrolled(store, rng)
    assert [c["id"] for c in store.captures(store.specimen("beta")["id"])] == ids["beta"]
    hits = store.vectors.search(vectors["beta"], 100)
    assert len(hits) == 2 and all(len(row) == 6 for row in hits)  # all six, no -1 padding
    for row, wanted in zip(hits, ids["beta"]):
        assert isinstance(row[0], Hit) and row[0].capture_id == wanted and row[0].similarity == pytest.approx(1)
        assert [h.similarity for h in row] == sorted((h.similarity for h in row), reverse=True)
    stored = store.vectors.vectors_of(ids["alpha"])
    np.testing.assert_allclose(np.stack([stored[i] for i in ids["alpha"]]), vectors["alpha"])
    assert store.local_features(ids["gamma"], FEATURES) == {ids["gamma"][0]: b"f0", ids["gamma"][1]: b"f1"}
    owners = store.capture_owners(ids["gamma"])
    assert {o["specimen"] for o in owners.values()} == {"gamma"}


def test_what_a_store_holds_survives_reopening(location):
    rng = np.random.default_rng(2)
    with open_store(location) as first:
        vectors, ids = _enrolled(first, rng)
    with open_store(location) as again:
        assert [h.capture_id for h in again.vectors.search(vectors["gamma"][:1], 1)[0]] == ids["gamma"][:1]
        assert again.model_id == MODEL and [s["name"] for s in again.specimens()] == ["alpha", "beta", "gamma"]


def test_a_removed_specimen_is_not_found_until_restored_under_the_same_ids(store):
    rng = np.random.default_rng(3)
    vectors, ids = _enrolled(store, rng)
    assert store.remove_specimen("alpha") == 2
    found = {h.capture_id for row in store.vectors.search(vectors["alpha"], 10) for h in row}
    assert not found & set(ids["alpha"]) and found == set(ids["beta"] + ids["gamma"])
    assert "alpha" not in [s["name"] for s in store.specimens()] and store.removed_specimens() == ["alpha"]
    # new vectors for a removed specimen's capture are kept, and not searched either
    store.vectors.add(ids["alpha"][:1], vectors["beta"][:1], MODEL)
    assert {h.capture_id for h in store.vectors.search(vectors["beta"][:1], 10)[0]} == set(ids["beta"] + ids["gamma"])
    assert store.restore_specimen("alpha") == 2
    assert [row[0].capture_id for row in store.vectors.search(vectors["alpha"][1:], 1)] == ids["alpha"][1:]
    assert {h.capture_id for h in store.vectors.search(vectors["beta"][:1], 2)[0]} == {ids["alpha"][0], ids["beta"][0]}


def test_vectors_removed_or_replaced_are_searched_as_they_are_now(store):
    rng = np.random.default_rng(4)
    vectors, ids = _enrolled(store, rng)
    store.vectors.remove(ids["beta"][:1])
    assert store.vectors.vectors_of(ids["beta"]).keys() == {ids["beta"][1]}
    assert ids["beta"][0] not in {h.capture_id for h in store.vectors.search(vectors["beta"][:1], 10)[0]}
    moved = vectors["alpha"][:1]  # gamma's first capture now has alpha's first vector
    store.vectors.add(ids["gamma"][:1], moved, MODEL)
    assert {h.capture_id for h in store.vectors.search(moved, 2)[0]} == {ids["alpha"][0], ids["gamma"][0]}


def test_a_failed_unit_of_work_leaves_nothing_behind(store):
    rng = np.random.default_rng(5)
    vectors, ids = _enrolled(store, rng, ("alpha",))
    trail = len(store.audit_trail())
    with pytest.raises(RuntimeError):
        with store.unit_of_work():
            store.add_captures(_records(store, "delta", _unit(rng, 2)), MODEL, FEATURES)
            store.rename_specimen("alpha", "omega")
            raise RuntimeError("stop before the commit")
    with pytest.raises(UnknownSpecimen):
        store.specimen("delta")
    assert store.specimen("alpha")["name"] == "alpha" and len(store.audit_trail()) == trail
    assert {h.capture_id for row in store.vectors.search(_unit(rng, 3), 10) for h in row} == set(ids["alpha"])
    # and nothing of it comes back with the next change that commits
    more = store.add_captures(_records(store, "epsilon", _unit(rng, 1)), MODEL, FEATURES)
    assert {h.capture_id for row in store.vectors.search(_unit(rng, 3), 10) for h in row} == {*ids["alpha"], *more}


def test_a_failed_inner_unit_of_work_undoes_only_itself(store):
    rng = np.random.default_rng(7)
    vectors, ids = _enrolled(store, rng, ("alpha",))
    phantom, real = _unit(rng, 1), _unit(rng, 1)
    with store.unit_of_work():
        with pytest.raises(RuntimeError):
            with store.unit_of_work():
                store.vectors.add(ids["alpha"][:1], phantom, MODEL)
                raise RuntimeError("undo this part only")
        store.vectors.add(ids["alpha"][1:], real, MODEL)
    np.testing.assert_allclose(store.vectors.vectors_of(ids["alpha"])[ids["alpha"][0]], vectors["alpha"][0])
    assert store.vectors.search(phantom, 1)[0][0].similarity < 0.99
    top = store.vectors.search(real, 1)[0][0]
    assert top.capture_id == ids["alpha"][1] and top.similarity == pytest.approx(1)


def test_what_a_failed_unit_of_work_had_loaded_is_not_searched_after_another_writer(location):
    rng = np.random.default_rng(8)
    with open_store(location) as mine, open_store(location) as other:
        _enrolled(mine, rng, ("alpha",))
        undone = _unit(rng, 2)
        with pytest.raises(RuntimeError):
            with mine.unit_of_work():  # two vector changes: the second loads what the first did
                mine.add_captures(_records(mine, "beta", undone[:1]), MODEL, FEATURES)
                mine.add_captures(_records(mine, "gamma", undone[1:]), MODEL, FEATURES)
                raise RuntimeError("undo both")
        fresh = _unit(rng, 1)
        (new,) = other.add_captures(_records(other, "delta", fresh), MODEL, FEATURES)
        top = mine.vectors.search(fresh, 1)[0][0]
        assert top.capture_id == new and top.similarity == pytest.approx(1)
        assert all(row[0].similarity < 0.99 for row in mine.vectors.search(undone, 1))


def test_every_change_is_audited_in_order(store):
    rng = np.random.default_rng(6)
    _enrolled(store, rng, ("alpha", "beta"), each=1)
    store.rename_specimen("alpha", "aleph")
    store.edit_specimen("aleph", {"stain": "H&E"}, "a note")
    store.merge_specimens("beta", "aleph")
    store.set_setting("margin", 0.2)
    actions = [r["action"] for r in reversed(store.audit_trail())]
    assert actions == ["create", "enrol", "create", "enrol", "rename", "edit", "merge", "merge", "setting"]
    assert store.setting("margin") == 0.2 and store.setting("unset", "fallback") == "fallback"


def test_writers_racing_for_one_name_leave_one_specimen(location):
    with open_store(location) as first:
        first.ensure_specimen("seed")
    errors, names = [], ["taken"] * 4 + ["free-1", "free-2"]

    def rename(new):
        try:
            with open_store(location) as mine:
                mine.ensure_specimen(f"from-{new}-{threading.get_ident()}")
                mine.rename_specimen(f"from-{new}-{threading.get_ident()}", new)
        except SpecimenIdError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=rename, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open_store(location) as after:
        listed = [s["name"] for s in after.specimens()]
    assert listed.count("taken") == 1 and "free-1" in listed and "free-2" in listed
    assert len(errors) == 3 and all("taken" in e for e in errors)


def test_queries_logged_while_their_specimen_is_merged_or_renamed_follow_it(location):
    """Queries are logged without the write lock: those being logged as a merge or a rename
    begins (decided for the specimen, or listing it as a candidate) must end up naming it as
    it is afterwards, never as nothing or by a name that is free again."""
    from types import SimpleNamespace

    rng = np.random.default_rng(9)
    with open_store(location) as station:
        _enrolled(station, rng, ("alpha", "beta"), each=1)
        for n, (change, old, new) in enumerate((("merge_specimens", "alpha", "beta"),
                                                ("rename_specimen", "beta", "gamma"))):
            data = f"query {n}".encode()
            sha = hashlib.sha256(data).hexdigest()
            capture = SimpleNamespace(data=data, extension="bin", file_sha256=sha, pixel_sha256=sha, quality={})
            decided = {"query": "q.png", "decision": "match", "specimen": old, "score": 0.9, "threshold": 0.5,
                       "candidates": [{"specimen": old, "score": 0.9}]}
            listed = {"query": "q.png", "decision": "no_match", "specimen": None, "score": 0.1, "threshold": 0.5,
                      "candidates": [{"specimen": old, "score": 0.1}]}
            failures = []

            def curate(change=change, old=old, new=new):  # another station's curator
                try:
                    with open_store(location) as curator:
                        getattr(curator, change)(old, new)
                except Exception as e:  # (said by the assertion below)
                    failures.append(e)

            curating = threading.Thread(target=curate)
            with station.unit_of_work(append_only=True):  # the queries' rows, not yet committed
                logged = station.log_queries([(decided, capture), (listed, capture)], MODEL, 5, "test")
                curating.start()
                curating.join(0.5)
                assert curating.is_alive()  # it waits for them
            curating.join()
            assert failures == []
            rows = [station.logged_query(uuid_) for uuid_ in logged]
            assert [(r["specimen"], r["candidates"][0]["specimen"]) for r in rows] == [(new, new), (None, new)]


def test_a_location_is_dispatched_by_its_form(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatabaseUnusable, match=r"^nosuch://lab:\*\*\*@host/db: this specimen-id has no backend"):
        open_store("nosuch://lab:secret@host/db")
    assert list(tmp_path.iterdir()) == []
    with open_store(tmp_path / "plain") as opened:
        assert opened.specimens() == []
