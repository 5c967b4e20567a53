"""The few named errors of specimen-id, each mapped once at the edges (CLI exit codes, web)."""


class SpecimenIdError(Exception):
    """Base class: the message is one line a user can act on."""

    exit_code = 1


class ImageRefused(SpecimenIdError):
    """A file that cannot be enrolled or queried; the batch goes on without it."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


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
