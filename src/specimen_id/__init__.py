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
from .store import Database as open_database  # noqa: E402
from .store.archive import export_archive, import_archive  # noqa: E402
from .store.csvfile import export_csv, import_csv  # noqa: E402

__all__ = [
    "DatabaseLocked", "DatabaseUnusable", "ImageRefused", "ModelMismatch", "NotAnImage",
    "SpecimenIdError", "UnknownSpecimen", "WeightsUnavailable", "__version__", "enroll",
    "enroll_folders", "export_archive", "export_csv", "import_archive", "import_csv", "open_database",
    "query", "reindex",
]
