"""Progress reporting: a small protocol the CLI implements with tqdm; the library stays silent.

Two kinds of events: byte counts of long transfers (``start``/``advance``/``finish``, keyed so
that several can run at once), and the steps of a job (``begin_step``/``end_step``: "pull",
"unpack", "resolve", "write the image", "boot"), which ``-v`` prints with their times.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol


class Progress(Protocol):
    """Receives the progress of long operations."""

    def start(self, key: str, label: str, total: int | None) -> None: ...

    def advance(self, key: str, amount: int) -> None: ...

    def finish(self, key: str) -> None: ...

    def begin_step(self, name: str) -> None: ...

    def end_step(self, name: str, ok: bool) -> None: ...


class NullProgress:
    """A progress sink that ignores everything (the library default); a base class for
    sinks that want only some of the events."""

    def start(self, key: str, label: str, total: int | None) -> None:
        pass

    def advance(self, key: str, amount: int) -> None:
        pass

    def finish(self, key: str) -> None:
        pass

    def begin_step(self, name: str) -> None:
        pass

    def end_step(self, name: str, ok: bool) -> None:
        pass


NULL_PROGRESS: Progress = NullProgress()


@contextlib.contextmanager
def step(progress: Progress, name: str) -> Iterator[None]:
    """Report the block as the step ``name`` (its end says whether it succeeded)."""
    progress.begin_step(name)
    ok = False
    try:
        yield
        ok = True
    finally:
        progress.end_step(name, ok)
