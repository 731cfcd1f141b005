"""config.json's ``MapDirs``, walked as Ops walks them (``lepton/image.go: addMappedFiles``).

A key is a host path whose last element is a pattern in Go's ``filepath.Match`` syntax
(``static/*``, ``assets/*.css``); its value is a folder of the image. The host folder before
the pattern is walked recursively, without following symlinks, and every entry at any
depth whose *name* matches the pattern goes to ``<value>/<its folder, relative to the walked
one>/<name>``: a file or a symlink as itself, a folder as a folder (its entries go in only
if their own names match). So ``static/*`` copies the whole of ``static`` and
``assets/*.css`` every ``.css`` file under ``assets``, in their folders. A relative key is
taken from the config file's folder (``LocalFilesParentDirectory``), an absolute one from
the target root.

Differences from Ops, on purpose: a key with no folder part (``static``) walks the config
file's folder (Ops walks the empty path and fails when the config file is in the current
folder); a key that matches nothing is a warning; entries are taken in name order (Ops's
map order is random).
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
from dataclasses import dataclass

from pyops.errors import HostFileError
from pyops.nanos.tree import sorted_names

log = logging.getLogger(__name__)

# A compiled pattern: a list of tokens, each _STAR, _ANY, a character, or a class
# (negated, ((lo, hi), ...)).
_STAR = "*"
_ANY = "?"
_Token = str | tuple[bool, tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True)
class MappedDir:
    """What one ``MapDirs`` entry puts in the image."""

    paths: tuple[tuple[str, str], ...] = ()
    """(host path, image path) of the files and symlinks, and of whole folders when the
    pattern matches every name."""
    folders: tuple[str, ...] = ()
    """Image folders to create (matched host folders, and the value itself when the
    pattern matches an empty name, as ``*`` does)."""


def go_match(pattern: str, name: str) -> bool:
    """Whether the file name ``name`` (no ``/``) matches ``pattern`` as Go's
    ``filepath.Match`` decides: ``*`` any run of characters, ``?`` one character,
    ``[abc]``, ``[a-z]`` and ``[^a-z]`` classes, ``\\`` escapes the next character. A
    malformed pattern matches nothing (Ops ignores Match's error)."""
    tokens = _compile(pattern)
    return tokens is not None and _matches(tokens, name)


def map_dir(key: str, guest: str, *, base_dir: str, target_root: str | None = None) -> MappedDir:
    """The files and folders the ``MapDirs`` entry ``key`` -> ``guest`` maps (see the
    module's description). A host folder that cannot be walked is a HostFileError."""
    root = (target_root or "") if key.startswith("/") else base_dir
    folder, pattern = _split(_go_join(root, key))
    tokens = _compile(pattern)
    walk_root = folder or "."
    reason: str | None
    try:
        reason = None if stat.S_ISDIR(os.stat(walk_root).st_mode) else "not a folder"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    if reason is not None:
        raise HostFileError(
            f"MapDirs {key!r}: cannot walk {walk_root} ({reason})",
            hint='a key is a folder and a pattern, like "static/*"; a relative one is taken '
            "from the config file's folder",
        )
    paths: list[tuple[str, str]] = []
    folders: list[str] = []
    if tokens is not None:
        if all(t == _STAR for t in tokens):  # every entry, so each folder whole
            for name, path, _ in _listing(walk_root, key):
                paths.append((path, _image_path(_go_join(guest, name))))
        else:
            _walk(walk_root, "", tokens, guest, key, paths, folders)
    if not (paths or folders):
        log.warning("MapDirs %r: nothing in %s matches %r", key, walk_root, pattern)
    if tokens is not None and _matches(tokens, ""):
        folders.insert(0, _image_path(guest))  # Ops's walk matches the folder itself too
    return MappedDir(tuple(paths), tuple(folders))


def _walk(
    host: str,
    rel: str,
    tokens: list[_Token],
    guest: str,
    key: str,
    paths: list[tuple[str, str]],
    folders: list[str],
) -> None:
    """Go's ``filepath.Walk`` below ``host`` (depth first, names in byte order), with the
    matching of ``addMappedFiles``; iterative, so any depth of folders works."""
    stack = [(host, rel)]
    while stack:
        folder, rel_folder = stack.pop()
        below: list[tuple[str, str]] = []
        for name, path, is_dir in _listing(folder, key):
            rel_path = f"{rel_folder}/{name}" if rel_folder else name
            if _matches(tokens, name):
                image = _image_path(_go_join(guest, rel_path))
                if is_dir:
                    folders.append(image)
                else:
                    paths.append((path, image))
            if is_dir:
                below.append((path, rel_path))
        stack.extend(reversed(below))


def _listing(folder: str, key: str) -> list[tuple[str, str, bool]]:
    """(name, host path, is a folder and not a symlink) of each entry, in byte order."""
    try:
        with os.scandir(folder) as it:
            entries = {e.name: e for e in it}
        return [
            (name, entries[name].path, entries[name].is_dir(follow_symlinks=False))
            for name in sorted_names(entries)
        ]
    except OSError as exc:
        raise HostFileError(f"MapDirs {key!r}: cannot list {folder} ({exc.strerror})") from None


def _go_join(*parts: str) -> str:
    """Go's ``filepath.Join`` on Unix: the non-empty parts joined by ``/``, cleaned."""
    joined = "/".join(p for p in parts if p)
    if not joined:
        return ""
    cleaned = posixpath.normpath(joined)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def _split(path: str) -> tuple[str, str]:
    """Go's ``filepath.Split``: everything up to the last ``/``, and the rest."""
    cut = path.rfind("/") + 1
    return path[:cut], path[cut:]


def _image_path(path: str) -> str:
    """An image path: Ops roots a relative one (it splits paths on ``/``)."""
    return "/" + path.lstrip("/")


def _compile(pattern: str) -> list[_Token] | None:
    """The tokens of a Go ``filepath.Match`` pattern, or None when it is malformed."""
    tokens: list[_Token] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if not tokens or tokens[-1] != _STAR:
                tokens.append(_STAR)
            i += 1
        elif c == "?":
            tokens.append(_ANY)
            i += 1
        elif c == "\\":
            if i + 1 >= n:
                return None
            tokens.append("\\" + pattern[i + 1])
            i += 2
        elif c == "[":
            i += 1
            negated = i < n and pattern[i] == "^"
            i += negated
            ranges: list[tuple[str, str]] = []
            while True:
                if i < n and pattern[i] == "]" and ranges:
                    i += 1
                    break
                lo, i = _class_char(pattern, i)
                if lo is None:
                    return None
                hi: str | None = lo
                if pattern[i] == "-":
                    hi, i = _class_char(pattern, i + 1)
                    if hi is None:
                        return None
                ranges.append((lo, hi or lo))
            tokens.append((negated, tuple(ranges)))
        else:
            tokens.append("\\" + c)
            i += 1
    return tokens


def _class_char(pattern: str, i: int) -> tuple[str | None, int]:
    """Go's ``getEsc``: one character of a class at ``i`` (``\\`` escapes), and where the
    class goes on; None when malformed (``-`` or ``]`` there, or the class left open)."""
    n = len(pattern)
    if i >= n or pattern[i] in "-]":
        return None, i
    if pattern[i] == "\\":
        i += 1
        if i >= n:
            return None, i
    if i + 1 >= n:
        return None, i + 1
    return pattern[i], i + 1


def _matches(tokens: list[_Token], name: str) -> bool:
    """Whether ``name`` matches the tokens (the set of positions reachable after each)."""
    states = {0}
    end = len(name)
    for token in tokens:
        if token == _STAR:
            states = set(range(min(states), end + 1))
            continue
        states = {s + 1 for s in states if s < end and _one(token, name[s])}
        if not states:
            return False
    return end in states


def _one(token: _Token, char: str) -> bool:
    if token == _ANY:
        return True
    if isinstance(token, str):
        return token[1] == char  # a literal, stored as "\\" + the character
    negated, ranges = token
    return any(lo <= char <= hi for lo, hi in ranges) != negated
