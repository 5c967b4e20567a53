"""Settings kept in the database: the values a user set with `config` (opaque here: config.py
says what they mean and their defaults), and the facts that tie its stored data together
(model, index generation)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from ..errors import FeaturesStale, ModelMismatch

CHUNK = 500  # ids a statement lists at most (PostgreSQL takes 65,535 parameters, whatever SQLite does)


def chunks(items) -> list[list]:
    """`items` in lists of CHUNK, for `IN (?, ...)` statements (none for none)."""
    items = list(items)
    return [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]


def marks(items) -> str:
    return ",".join("?" * len(items))


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Settings:
    """Needs `self.db` (a sqlite_utils Database with a `settings` table) and `count()`."""

    def setting(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else default

    def set_setting(self, key: str, value, default=None) -> None:
        """Change a setting a user chose, audited with what it was before (`default` when it
        was never set); internal facts use `_put_setting`."""
        with self.unit_of_work():
            before = self.setting(key, default)
            self._put_setting(key, value)
            self._audit("setting", key=key, before=before, after=value)

    def _put_setting(self, key, value) -> None:
        self.db.execute("INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) "
                        "DO UPDATE SET value = excluded.value", [key, json.dumps(value)])

    @property
    def model_id(self) -> str | None:
        return self.setting("model_id")

    def threshold(self, score_kind: str, default: float) -> float:
        """The threshold set for this kind of score, else the default."""
        record = self.threshold_record(score_kind)
        return float(record["value"]) if record else default

    def threshold_record(self, score_kind: str) -> dict | None:
        """The stored threshold (with its calibration facts) when it applies to this kind of
        score and this database's model; a threshold set for another kind (an older scoring,
        another model's calibration) is never applied."""
        stored = self.setting("threshold")
        # (a bare number is a cosine threshold from before scores had kinds)
        if isinstance(stored, dict) and stored["score_kind"] == score_kind \
                and stored["model_id"] in (None, self.model_id):
            return stored
        return None

    def threshold_note(self, score_kind: str) -> str | None:
        """Why a stored threshold is not applied, when one was set for another kind of score or
        another model: `calibrate` is due (None when it applies, or none was ever set)."""
        stored = self.setting("threshold")
        if stored is None or self.threshold_record(score_kind) is not None:
            return None
        return ("the stored threshold was set for another kind of score or model and no longer "
                "applies (the default does); run `specimen-id calibrate` to fit this one")

    def set_threshold(self, value: float, score_kind: str, model_id: str | None = None, **facts) -> None:
        """Store a threshold for a kind of score (and, when calibrated, for one model)."""
        self.set_setting("threshold", {"value": float(value), "score_kind": score_kind,
                                       "model_id": model_id, "set_at": now(), **facts})

    def _vectors_changed(self, model_id, dim) -> int:
        """Inside a write transaction: the stored vectors changed (of this model and dimension,
        when given); the generation that counts such changes moves on. Returns it."""
        generation = self.generation + 1
        self._put_setting("index_generation", generation)
        if model_id:
            self._put_setting("model_id", model_id)
        if dim:
            self._put_setting("embedding_dim", int(dim))
        return generation

    @property
    def generation(self) -> int:
        return int(self.setting("index_generation", 0))

    def require_model(self, model_id: str) -> None:
        """Embeddings of one model only: refuse another while captures exist (models/ says,
        before this, what to do about it)."""
        current = self.model_id
        if current and current != model_id and self.count("captures"):
            raise ModelMismatch(f"this database holds embeddings of {current}, not {model_id}: one "
                                "database holds one model's vectors (`specimen-id reindex` re-embeds them)")

    def require_features(self, version: str) -> None:
        """Local features of one recipe only: those of another are recomputed before this
        version enrols or verifies against them."""
        current = self.setting("features_version")
        if current and current != version and self.count("captures"):
            raise FeaturesStale(f"this database's local features were made by recipe {current}, this "
                                f"version verifies with {version}; run `specimen-id reindex --features-only` "
                                "(recomputes them from the stored images, keeps the CNN vectors)")

    def use_model(self, name: str, weights, model_id: str) -> None:
        """Record which model (and explicit weights file, None for the model's own) this
        database embeds with."""
        self.require_model(model_id)
        with self.unit_of_work():
            self._put_model(name, weights)

    def record_probe(self, probe: dict) -> None:
        """How this database's model embeds fixed fields (models/probe.py): a fact of the
        machines that fill it, not a user's choice, so not audited."""
        with self.unit_of_work():
            self._put_setting("probe", probe)

    def _put_model(self, name: str, weights) -> None:
        self._put_setting("model_name", name)
        self._put_setting("weights_path", str(Path(weights).resolve()) if weights else None)
