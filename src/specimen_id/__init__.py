"""specimen-id: which enrolled specimen is this microscope capture?

    import specimen_id
    db = specimen_id.open_database("specimen-db")
    specimen_id.enroll(db, "slide-17", ["a.png", "b.png"], {"stain": "H&E"})
    for result in specimen_id.query(db, ["new.jpg"]):
        print(result["decision"], result["specimen"], result["score"])

Importing this package loads neither torch nor a model; they load on first use.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("specimen-id")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

from .errors import (  # noqa: E402
    DatabaseLocked,
    DatabaseUnusable,
    ImageRefused,
    ModelMismatch,
    NotAnImage,
    SpecimenIdError,
    UnknownSpecimen,
    WeightsUnavailable,
)
from .indexer import enroll, enroll_folders, reindex  # noqa: E402
from .search import query  # noqa: E402
from .store import import_archive  # noqa: E402
from .store import open_store as open_database  # noqa: E402


def export_archive(db, archive) -> dict:
    """Write a backup archive of `db` (.tar, .tar.gz or .tgz); returns its manifest."""
    from .search.score import threshold_facts

    return db.export_archive(archive, threshold_facts(db), __version__)


def export_csv(db, path) -> int:
    """One row per specimen; returns how many were written."""
    return db.export_csv(path)


def import_csv(db, path):
    """Names, notes and metadata updated from a CSV; returns what was updated and skipped."""
    return db.import_csv(path)


__all__ = [
    "DatabaseLocked", "DatabaseUnusable", "ImageRefused", "ModelMismatch", "NotAnImage",
    "SpecimenIdError", "UnknownSpecimen", "WeightsUnavailable", "__version__", "enroll",
    "enroll_folders", "export_archive", "export_csv", "import_archive", "import_csv", "open_database",
    "query", "reindex",
]
