"""The settings a user may change with `config`: their types, ranges and defaults. The store
keeps their values as opaque JSON; what they mean, and what they are when unset, is said here."""

from __future__ import annotations

from .quality import LIMITS
from .store import DEFAULT_KIND, INDEX_KINDS

# The threshold is kept with the kind of score it applies to (see Settings.threshold).
# The quality gate's limits are settings too (quality.py says how their defaults were chosen).
SETTINGS = {"threshold": float, "margin": float, "top_k": int, "shortlist": int, "index": str,
            **{key: type(value) for key, value in LIMITS.items()}}
DEFAULTS = {"margin": 0.1, "top_k": 5, "shortlist": 100, "index": DEFAULT_KIND, **LIMITS}
SHARES = ("threshold", "margin", *(key for key in LIMITS if key.startswith("max_")))  # 0..1


def setting(db, key: str):
    """The value this database has for a user's setting: the one set, else the default."""
    return db.setting(key, DEFAULTS.get(key))


def parse_setting(key: str, text: str):
    """A user's value for a setting, checked; ValueError says what is wrong."""
    try:
        value = SETTINGS[key](text)
    except ValueError:
        raise ValueError(f"{text!r} is not a {SETTINGS[key].__name__}") from None
    if key == "index" and value not in INDEX_KINDS:
        raise ValueError(f"index {text!r} is not one of {', '.join(INDEX_KINDS)}")
    if key != "index" and not (0 <= value <= 1 if key in SHARES else value >= 1):
        raise ValueError(f"{key} {text} is out of range")
    return value
