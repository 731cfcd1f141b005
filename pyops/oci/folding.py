"""Host folders that fold names: two names that differ only in case, or only in Unicode
normalisation, are one entry there.

macOS's APFS is case-insensitive by default and normalisation-insensitive always (HFS+ as
well, which also stores names decomposed); Windows filesystems and ext4 folders with the
``casefold`` attribute are case-insensitive. An image's filesystem is Linux's and holds such
names apart (``xt_CONNMARK.h`` and ``xt_connmark.h`` in linux-libc-dev, ``é`` spelt
precomposed and decomposed), so the layer applier must know when the folder it fills does
not (:class:`pyops.oci.layers.Unpacker`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import unicodedata
from pathlib import Path

from pyops import atomic

__all__ = ["fold", "folds"]

_PROBE_STEMS = ("fold-\u00e9", "fold")
"""The probe file's name, lower case with a precomposed (NFC) letter; the plain ASCII one
where the filesystem refuses that name."""
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def fold(name: str) -> str:
    """The key under which a folding filesystem finds ``name``: its canonical caseless form
    (Unicode's ``NFD(casefold(NFD(name)))``), which names that differ only in case or in
    normalisation share."""
    if name.isascii():
        return name.lower()
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def folds(folder: str | os.PathLike[str]) -> bool:
    """Whether the existing folder ``folder`` folds names (case, Unicode normalisation).

    A probe file with a lower-case, precomposed name is made in it, looked up by its
    upper-case and its decomposed (NFD) spellings, and removed, whatever happens. Raises the
    :class:`OSError` of making it when the folder is not writable.
    """
    base = Path(folder)
    for stem in _PROBE_STEMS:
        path = os.fspath(atomic.temp_path(base / stem))
        try:
            os.close(os.open(path, _NEW_FILE, 0o600))
        except OSError as exc:
            if stem != _PROBE_STEMS[-1] and exc.errno in (errno.EILSEQ, errno.EINVAL):
                continue  # a filesystem that takes ASCII names only: probe the case alone
            raise
        try:
            made = os.lstat(path)
            name = os.path.basename(path)
            for spelling in {name.upper(), unicodedata.normalize("NFD", name)} - {name}:
                try:
                    found = os.lstat(os.path.join(base, spelling))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if os.path.samestat(made, found):
                    return True
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    raise AssertionError("unreachable: the last probe name raises or answers")  # pragma: no cover
