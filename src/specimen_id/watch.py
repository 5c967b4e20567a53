"""Watching a folder where a camera app saves its shots: each new image is handled once it is
completely written, by content, exactly once across restarts.

Polling, not inotify (watchdog): the camera's folder is often a network share or a USB drive
where file-system events are missing or late, and an event says only that a file changed,
not that the writer is done, so the size/mtime-stable check below is needed either way. One
`stat` per file per poll is cheap at the size of a capture folder.

A file is ready when its size and mtime have not changed for `settle` polls; it is then read
once, hashed (sha256 of the bytes: camera apps reuse names, content is what counts) and
decoded. Content already handled (recorded in the database's `watched` table) is skipped. A
file that does not decode yet is given `patience` more polls, unchanged, before it is refused
(a writer may pause mid-file), so a non-image is reported after that wait too.

While another process holds the database's write lock (a reindex can take minutes), a file
waits: it is tried again with a growing pause, one `waiting:` line a minute says so, and no
file seen is dropped."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from . import images
from .errors import DatabaseLocked, ImageRefused
from .text import one_line

WAIT_LINE_S = 60  # one line a minute while the database is locked
MAX_PAUSE_S = 60


@dataclass
class _Seen:
    signature: tuple  # (size, mtime_ns) last seen
    stable: int = 0  # polls it has stayed the same
    done: bool = False  # this signature was handled (or refused) already


class Watcher:
    """Handles a folder's new images with `act(capture, path) -> (outcome, line)` (its `key`
    names the action: content is handled once per action), printing a line per decision
    through `emit`."""

    def __init__(self, db, folder, act, emit, settle: int = 2, patience: int = 10):
        self.db, self.folder, self.act, self.emit = db, Path(folder), act, emit
        self.settle, self.patience = settle, patience
        self.seen: dict[Path, _Seen] = {}
        self._pause, self._resume_at, self._said_waiting = 0.0, 0.0, -WAIT_LINE_S
        self.once = False

    def files(self):
        """Regular files under the folder, hidden ones (camera apps' temp files) left out."""
        for path in images.visible_files(self.folder):
            try:
                yield path, path.stat()
            except OSError:
                continue  # gone between listing and stat: the next poll sees what is there

    def poll(self) -> int:
        """One pass over the folder; returns how many files were decided on."""
        decided = 0
        present = set()
        for path, st in self.files():
            present.add(path)
            signature = (st.st_size, st.st_mtime_ns)
            seen = self.seen.get(path)
            if seen is None or seen.signature != signature:  # new, or (re)written since
                self.seen[path] = seen = _Seen(signature)
            else:
                seen.stable += 1
            if seen.done or seen.stable < self.settle or time.monotonic() < self._resume_at:
                continue
            try:
                decided += self._decide(path, seen)
                self._pause = 0.0
            except DatabaseLocked as e:  # not done: this file and the rest are tried again
                self._wait(path, e)
        for gone in set(self.seen) - present:
            del self.seen[gone]
        return decided

    def _decide(self, path: Path, seen: _Seen) -> int:
        try:
            data = path.read_bytes()
        except OSError as e:
            self.emit(f"refused: {one_line(path)}: cannot be read ({e.strerror or e})")
            seen.done = True
            return 1
        digest = hashlib.sha256(data).hexdigest()
        before = self.db.watched(digest, self.act.key)
        if before:
            self.emit(f"skipped: {one_line(path)}: same content as {one_line(before['name'])}, already "
                      f"{before['outcome']} at {before['handled_at']}")
            seen.done = True
            return 1
        try:
            capture = images.decode(data, str(path))
        except ImageRefused as e:
            # A PNG or TIFF cut short may not even show a whole header yet: any refusal may
            # be a writer still at work, so the file gets `patience` unchanged polls first.
            if seen.stable < self.settle + self.patience:
                return 0
            return self._record(seen, digest, path, "refused", f"refused: {e}")
        outcome, line = self.act(capture, path)
        # an enrolment refusal (quality, a duplicate of another specimen) depends on settings
        # and flags that may change before a restart, so it is not recorded as final
        return self._record(seen, digest, path, outcome, line, final=outcome != "refused")

    def _wait(self, path: Path, error: DatabaseLocked) -> None:
        if self.once:  # nobody waits for a one-off pass: say so and stop (exit 3)
            raise error
        now = time.monotonic()
        self._pause = min(MAX_PAUSE_S, max(1.0, self._pause * 2))
        self._resume_at = now + self._pause
        if now - self._said_waiting >= WAIT_LINE_S:
            self._said_waiting = now
            self.emit(f"waiting: {one_line(path)}: {error}; trying again (Ctrl-C to stop)")

    def _record(self, seen, digest, path, outcome, line, final: bool = True) -> int:
        if final:
            self.db.mark_watched(digest, self.act.key, path.name, outcome, line)
        self.emit(line)
        seen.done = True
        return 1

    def run(self, interval: float, once: bool = False) -> None:
        if once:
            self.settle, self.patience, self.once = 0, 0, True  # what is there now is taken as complete
            self.poll()
            return
        while True:
            self.poll()
            time.sleep(interval)


def enrol_action(service, specimen: str, allow_low_quality: bool = False):
    """Enrol each new image as a capture of one specimen (the enrol command's code path)."""

    def act(capture, path):
        # the capture already read and hashed: the file may hold the next shot by now
        report = service.enrol([(specimen, [capture])], allow_low_quality=allow_low_quality)
        if report.refused:
            return "refused", f"refused: {report.refused[0]}"
        if report.skipped:
            return "skipped", f"skipped: {one_line(path)}: already enrolled in {specimen} (same {report.skipped[0][1]})"
        return "enrolled", f"enrolled: {one_line(path)} as a capture of {specimen}" + "".join(
            f"; warning: {warning}" for _, warning in report.warnings)  # as query_action's line
    act.key = f"enrol:{specimen}"  # what "handled" means: the same content may go elsewhere too
    return act


def query_action(service):
    """Answer (and log) each new image like `query` does; low quality warns, never refuses."""

    def act(capture, path):
        result = service.identify(capture)
        line = f"{result['decision']}: {one_line(path)}"
        if result["specimen"]:
            line += f": {result['specimen']}"
        line += f" (score {result['score']:.3f}, query {result['query_id']})"
        for warning in result["warnings"]:
            line += f"; warning: {warning}"
        return result["decision"], line
    act.key = "query"
    return act
