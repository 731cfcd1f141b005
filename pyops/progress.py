"""Progress reporting: a small protocol the CLI implements with tqdm; the library stays silent."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress of long operations, keyed so several can run at once."""

    def start(self, key: str, label: str, total: int | None) -> None: ...

    def advance(self, key: str, amount: int) -> None: ...

    def finish(self, key: str) -> None: ...


class NullProgress:
    """A progress sink that ignores everything (the library default)."""

    def start(self, key: str, label: str, total: int | None) -> None:
        pass

    def advance(self, key: str, amount: int) -> None:
        pass

    def finish(self, key: str) -> None:
        pass


NULL_PROGRESS: Progress = NullProgress()
