"""A host folder that folds names as macOS's APFS does, on a Linux test machine.

:func:`fold_names` makes every path-taking ``os`` call under a folder look each component
up by its caseless, decomposed form, as a case-insensitive, normalisation-insensitive but
case-preserving filesystem does: ``open("XT_connmark.h", O_CREAT | O_EXCL)`` fails when
``xt_CONNMARK.h`` is there, ``unlink("FOO")`` removes ``foo``, ``mkdir`` keeps the name as
given. Calls relative to a folder descriptor (``dir_fd``) are left as they are: they name
entries by what a listing returned.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# Which positional arguments are paths to look up (os.symlink's first is the link's text).
_CALLS: dict[str, tuple[int, ...]] = {
    "lstat": (0,),
    "stat": (0,),
    "open": (0,),
    "mkdir": (0,),
    "rmdir": (0,),
    "unlink": (0,),
    "remove": (0,),
    "readlink": (0,),
    "listdir": (0,),
    "scandir": (0,),
    "utime": (0,),
    "chmod": (0,),
    "access": (0,),
    "symlink": (1,),
    "link": (0, 1),
    "rename": (0, 1),
    "replace": (0, 1),
}


def key(name: str) -> str:
    """What the emulated filesystem compares names by (NFD, then case folded)."""
    return unicodedata.normalize("NFD", name).casefold()


def fold_names(top: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the existing folder ``top`` fold names for the rest of the test."""
    base = os.fspath(top)
    real_listdir = os.listdir

    def on_host(path: Any) -> Any:
        if isinstance(path, int):
            return path
        text = os.fspath(path)
        if not isinstance(text, str) or not text.startswith(base + "/"):
            return path
        names = text[len(base) + 1 :].split("/")
        found = base
        for i, name in enumerate(names):
            if name in ("", ".", ".."):
                found = os.path.join(found, name)
                continue
            try:
                there = real_listdir(found)
            except OSError:  # missing, or not a folder: the rest as given
                return os.path.join(found, *names[i:])
            wanted = key(name)
            found = os.path.join(found, next((n for n in there if key(n) == wanted), name))
        return found

    def wrap(real: Callable[..., Any], positions: tuple[int, ...]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("dir_fd") is None and kwargs.get("src_dir_fd") is None:
                args = tuple(on_host(a) if i in positions else a for i, a in enumerate(args))
            return real(*args, **kwargs)

        return call

    for name, positions in _CALLS.items():
        monkeypatch.setattr(os, name, wrap(getattr(os, name), positions))
