"""The few named errors of specimen-id, each mapped once at the edges (CLI exit codes, web)."""


class SpecimenIdError(Exception):
    """Base class: the message is one line a user can act on."""

    exit_code = 1


class ImageRefused(SpecimenIdError):
    """A file that cannot be enrolled or queried; the batch goes on without it."""

    def __init__(self, path, reason):
        from .text import one_line

        self.path = str(path)
        self.reason = reason
        super().__init__(f"{one_line(self.path)}: {reason}")


class NotAnImage(ImageRefused):
    pass


class DamagedImage(ImageRefused):
    pass


class ImageTooLarge(ImageRefused):
    pass


class DuplicateContent(ImageRefused):
    """The same pixels are already enrolled under another specimen."""


class LowQuality(ImageRefused):
    """Out of focus, badly exposed or too small to enrol (see quality.py)."""


class CaptureFailed(SpecimenIdError):
    """A camera or video source that cannot be opened or stops giving frames."""


class UnknownSpecimen(SpecimenIdError):
    def __init__(self, name):
        self.name = name
        super().__init__(f"no specimen named {name!r} (see `specimen-id list`)")


class CaptureGone(UnknownSpecimen):
    """A capture named by its uuid (a review's "this one") that no enrolled specimen holds."""

    def __init__(self, capture_uuid: str, removed: bool):
        self.name = capture_uuid
        SpecimenIdError.__init__(self, (
            f"the capture {capture_uuid} is no longer enrolled: its specimen was removed or purged since; "
            "review the query with the specimen's name, or as none of these") if removed else (
            f"no capture {capture_uuid} in this database"))


class SpecimenRemoved(UnknownSpecimen):
    """A soft-deleted specimen: gone from list and query, its name reserved until purged."""

    def __init__(self, name):
        self.name = name
        SpecimenIdError.__init__(self, f"specimen {name!r} was removed; `specimen-id restore {name}` "
                                       f"brings it back, `specimen-id purge {name}` frees the name")


class DatabaseUnusable(SpecimenIdError):
    """The database cannot be used as asked; the message says what to do."""

    exit_code = 3


class ModelMismatch(DatabaseUnusable):
    pass


class FeaturesStale(ModelMismatch):
    """Local features stored by an earlier recipe: `reindex --features-only` recomputes them."""


class DatabaseLocked(DatabaseUnusable):
    pass


class DatabaseDamaged(DatabaseUnusable):
    pass


class WeightsUnavailable(DatabaseUnusable):
    """Model weights cannot be had (offline download, missing or wrong file)."""


class StorageFailed(DatabaseUnusable):
    """The disk refused a write (full, read-only, failing): what was committed before it stays."""

    full = False  # the web app answers 507 Insufficient Storage for a full disk, 503 otherwise


def storage_failure(error: BaseException, where) -> StorageFailed | None:
    """A disk-full, read-only or I/O failure from SQLite or the OS as one line naming `where`,
    or None for any other error (which keeps its own handling)."""
    import errno
    import sqlite3

    code = getattr(error, "sqlite_errorcode", None) if isinstance(error, sqlite3.Error) else None
    if isinstance(error, sqlite3.Error) and code is None:  # Python < 3.11: only the message
        text = str(error)
        code = (sqlite3.SQLITE_FULL if "full" in text else sqlite3.SQLITE_READONLY if "readonly" in text
                else sqlite3.SQLITE_IOERR if "I/O" in text else None)
    number = error.errno if isinstance(error, OSError) else None
    if code is not None:
        code &= 0xFF  # extended codes (SQLITE_IOERR_WRITE...) share the primary code's low byte
    if code == sqlite3.SQLITE_FULL or number in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        what, full = "the disk is full", True
    elif code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN) or number in (errno.EROFS, errno.EACCES, errno.EPERM):
        what, full = "cannot be written (read-only, or no permission)", False
    elif code == sqlite3.SQLITE_IOERR or number == errno.EIO:
        what, full = "a read or write failed (is the disk full or failing?)", False
    else:
        return None
    detail = getattr(error, "strerror", None) or str(error)
    failed = StorageFailed(f"{where}: {what} ({detail}); what was committed before it is kept: "
                           "fix that and run the command again")
    failed.full = full
    return failed
