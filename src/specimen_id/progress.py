"""Progress bars (rate and ETA) on stderr for long operations, silent when not on a terminal."""

from contextlib import contextmanager


@contextmanager
def progress_bar(total: int, what: str, enabled: bool):
    from tqdm import tqdm

    # disable=None lets tqdm switch itself off when stderr is not a terminal (logs, pipes).
    with tqdm(total=total, desc=what, unit="img", disable=None if enabled else True,
              leave=False, dynamic_ncols=True) as bar:
        yield bar
