"""The resolver on hostile roots: every read bounded, every walk iterative, work deduplicated.

Roots are made of small ELF files from :func:`tests.test_hostile_elf.make_elf` (x86-64, no
interpreter, so the loader's default directories are guessed: /lib and /usr/lib). Limits
are lowered with ``PYOPS_LIMIT_*`` to prove the mechanism without giant inputs; large files
are sparse.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyops.elf import ldd
from pyops.elf.ldd import Resolver, _find_system_dirs, _parse_ld_so_cache, format_tree, resolve
from pyops.errors import LimitExceeded, NotAnElf
from tests.elf.test_hostile_elf import make_elf, write_elf

SYSTEM_DIRS = b"\0/lib/x86_64-linux-gnu/\0/usr/lib/x86_64-linux-gnu/\0/lib/\0/usr/lib/\0"


def lib(root: Path, path: str, **kw: object) -> Path:
    return write_elf(root / path.lstrip("/"), make_elf(**kw))  # type: ignore[arg-type]


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    calls: list[str] = []
    original = getattr(ldd._Search, name)

    def wrapper(self: ldd._Search, lib_name: str, *args: object, **kw: object) -> object:
        calls.append(lib_name)
        return original(self, lib_name, *args, **kw)

    monkeypatch.setattr(ldd._Search, name, wrapper)
    return calls


def test_sixty_thousand_needed_entries_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib(tmp_path, "/lib/libx.so", soname="libx.so")
    lib(tmp_path, "/bin/app", needed=["libx.so"] * 60_000, elf_type=2)
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_NEEDED"):
        resolve("/bin/app", tmp_path)
    # With the limit raised, the one name is looked up once per $PLATFORM pass, not 60,000
    # times, and reported once.
    monkeypatch.setenv("PYOPS_LIMIT_NEEDED", "100000")
    calls = count_calls(monkeypatch, "map")
    res = resolve("/bin/app", tmp_path)
    assert [lib.path for lib in res.libraries] == ["/lib/libx.so"]
    assert res.program.needed == (("libx.so", "/lib/libx.so"),)
    assert calls == ["libx.so"]


def test_same_needed_name_twice_is_one_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib(tmp_path, "/lib/liba.so")
    lib(tmp_path, "/bin/app", needed=["liba.so", "libmissing.so", "liba.so", "libmissing.so"])
    calls = count_calls(monkeypatch, "map")
    res = resolve("/bin/app", tmp_path, allow_missing=True)
    assert calls == ["liba.so", "libmissing.so"]
    assert [m.name for m in res.missing] == ["libmissing.so"]


def test_objects_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(6):
        lib(tmp_path, f"/lib/lib{i}.so")
    lib(tmp_path, "/bin/app", needed=[f"lib{i}.so" for i in range(6)])
    monkeypatch.setenv("PYOPS_LIMIT_OBJECTS", "5")
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_OBJECTS"):
        resolve("/bin/app", tmp_path)
    monkeypatch.setenv("PYOPS_LIMIT_OBJECTS", "6")
    assert len(resolve("/bin/app", tmp_path).libraries) == 6


def test_huge_sparse_ld_so_conf_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib(tmp_path, "/opt/lib/liba.so")
    lib(tmp_path, "/bin/app", needed=["liba.so"])
    conf = tmp_path / "etc/ld.so.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("/opt/lib\n")
    # Within the limit, it is read (and used, as if ldconfig had been run).
    res = resolve("/bin/app", tmp_path, emulate_ldconfig=True)
    assert res.libraries[0].path == "/opt/lib/liba.so"
    os.truncate(conf, 2 << 30)  # 2 GB, sparse: refused from its size, never read
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_LOADER_FILE_BYTES"):
        resolve("/bin/app", tmp_path, emulate_ldconfig=True)
    # The limit is the variable's, and counts the included files too.
    conf.write_text("include /etc/ld.so.conf.d/*.conf\n")
    (tmp_path / "etc/ld.so.conf.d").mkdir()
    (tmp_path / "etc/ld.so.conf.d/a.conf").write_text("/opt/lib\n" * 20)
    assert resolve("/bin/app", tmp_path, emulate_ldconfig=True).libraries
    monkeypatch.setenv("PYOPS_LIMIT_LOADER_FILE_BYTES", "100")
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_LOADER_FILE_BYTES"):
        resolve("/bin/app", tmp_path, emulate_ldconfig=True)


def test_huge_ld_so_cache_is_refused(tmp_path: Path) -> None:
    lib(tmp_path, "/lib/liba.so")
    lib(tmp_path, "/bin/app", needed=["liba.so"])
    cache = tmp_path / "etc/ld.so.cache"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"glibc-ld.so.cache1.1")
    os.truncate(cache, 2 << 30)
    with pytest.raises(LimitExceeded, match="ld.so.cache"):
        resolve("/bin/app", tmp_path)


def test_ld_so_cache_strings_are_bounded() -> None:
    # Every entry points into one long string without NUL: each string is capped at
    # PATH_MAX and read once per offset; the total is bounded by the file's size.
    nlibs = 20_000
    header = bytearray(b"glibc-ld.so.cache1.1")
    header += nlibs.to_bytes(4, "little") + bytes(48 - len(header) - 4)
    entry = (0x0303).to_bytes(4, "little") + (48 + 24 * nlibs).to_bytes(4, "little") * 2
    entry += bytes(24 - len(entry))
    data = bytes(header) + entry * nlibs + b"a" * 100_000
    parsed = _parse_ld_so_cache(data)
    assert list(parsed) == ["a" * 4096]
    assert len(parsed["a" * 4096]) == nlibs
    # Entries at every offset of the long string: overlapping strings are refused.
    entries = b"".join(
        (0x0303).to_bytes(4, "little") + (48 + 24 * nlibs + i).to_bytes(4, "little") * 2 + bytes(12)
        for i in range(nlibs)
    )
    with pytest.raises(LimitExceeded, match="ld.so.cache"):
        _parse_ld_so_cache(bytes(header) + entries + b"a" * 100_000)


def test_huge_interpreter_file_is_scanned_in_a_bounded_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loader's built-in directories are read from the loader file: only a prefix of a
    # huge one (sparse, 1 GB here) is scanned.
    loader = lib(tmp_path, "/lib64/ld.so", extra=SYSTEM_DIRS.replace(b"x86_64-linux-gnu", b"z"))
    os.truncate(loader, 1 << 30)
    lib(tmp_path, "/lib/z/liba.so")
    lib(tmp_path, "/bin/app", needed=["liba.so"], interp="/lib64/ld.so")
    res = resolve("/bin/app", tmp_path)
    assert res.libraries[0].path == "/lib/z/liba.so"
    # Past the prefix the list is not seen: the directories are guessed from the layout.
    monkeypatch.setenv("PYOPS_LIMIT_LOADER_FILE_BYTES", "200")
    res = resolve("/bin/app", tmp_path, allow_missing=True)
    assert [m.name for m in res.missing] == ["liba.so"]


def test_system_dirs_scan_is_linear() -> None:
    assert _find_system_dirs(b"\x7fELF" + SYSTEM_DIRS) == [
        "/lib/x86_64-linux-gnu/",
        "/usr/lib/x86_64-linux-gnu/",
        "/lib/",
        "/usr/lib/",
    ]
    assert _find_system_dirs(b"\0/a/\0/b/\0") is None  # no lib directory
    assert _find_system_dirs(b"\0x/lib/\0/usr/lib/\0") is None  # strings start after a NUL
    assert _find_system_dirs(b"\0/\0/lib/\0") is None  # "/" alone is not a directory
    # Inputs that make a backtracking pattern quadratic take one pass (a quadratic scan of
    # these would not end in any reasonable time).
    for hostile in (b"/" * 400_000, b"\0/" * 200_000, b"\0/" + b"a/" * 200_000, bytes(400_000)):
        assert _find_system_dirs(hostile) is None
    assert _find_system_dirs(b"\0" + b"/" * 400_000 + b"/\0/lib/\0") == ["/" * 400_001, "/lib/"]


@pytest.mark.parametrize("rpath", [None, "/lib:/nowhere"])
def test_deep_needed_chain(tmp_path: Path, rpath: str | None) -> None:
    # With an RPATH on each library, every lookup walks the chain above it (as glibc
    # does); the directories it repeats are tried once.
    depth = 1500
    for i in range(depth):
        needed = [f"lib{i + 1}.so"] if i + 1 < depth else []
        lib(tmp_path, f"/lib/lib{i}.so", needed=needed, rpath=rpath)
    lib(tmp_path, "/bin/app", needed=["lib0.so"])
    res = resolve("/bin/app", tmp_path)
    assert len(res.libraries) == depth
    text = format_tree(res)
    last = f"{'    ' * depth}lib{depth - 1}.so => /lib/lib{depth - 1}.so"
    assert last in text.splitlines()
    assert res.to_dict()["libraries"][-1]["needed_by"] == f"/lib/lib{depth - 2}.so"


def test_many_part_ld_library_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib(tmp_path, "/opt/liba.so")
    lib(tmp_path, "/bin/app", needed=["liba.so"])
    many = ":".join(f"/nowhere{i}" for i in range(700)) + ":/opt"
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_PATH_ELEMENTS"):
        resolve("/bin/app", tmp_path, env={"LD_LIBRARY_PATH": many})
    # One element of 700 parts: a lookup walks it without recursion, or refuses it.
    deep = "/opt" + "/." * 699
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_PATH_ELEMENTS"):
        resolve("/bin/app", tmp_path, env={"LD_LIBRARY_PATH": deep})
    monkeypatch.setenv("PYOPS_LIMIT_PATH_ELEMENTS", "100000")
    res = resolve("/bin/app", tmp_path, env={"LD_LIBRARY_PATH": many})
    assert res.libraries[0].found_via == "LD_LIBRARY_PATH"
    deeper = "/opt" + "/../opt" * 5000
    res = resolve("/bin/app", tmp_path, env={"LD_LIBRARY_PATH": deeper})
    assert res.libraries[0].real_path == "/opt/liba.so"


def test_many_part_needed_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib(tmp_path, "/opt/liba.so")
    name = "/opt" + "/." * 700 + "/liba.so"
    lib(tmp_path, "/bin/app", needed=[name])
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_PATH_ELEMENTS"):
        resolve("/bin/app", tmp_path)
    monkeypatch.setenv("PYOPS_LIMIT_PATH_ELEMENTS", "100000")
    assert resolve("/bin/app", tmp_path).libraries[0].real_path == "/opt/liba.so"


def test_deep_folders_and_link_chains_resolve_without_recursion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYOPS_LIMIT_PATH_ELEMENTS", "100000")
    # 600 levels: two stack frames a level were a RecursionError (the test stays shallow
    # enough for pytest's recursive clean-up of tmp_path).
    depth = 600
    # A deep folder made one level at a time from its parent (os.makedirs recurses).
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.symlink("/lib", "hop", dir_fd=fd)
    finally:
        os.close(fd)
    lib(tmp_path, "/lib/liba.so")
    lib(tmp_path, "/bin/app", needed=["/d" * depth + "/hop/liba.so"])
    res = resolve("/bin/app", tmp_path)
    assert res.libraries[0].real_path == "/lib/liba.so"
    assert res.libraries[0].chain == ("/d" * depth + "/hop", "/lib/liba.so")


def test_symlink_loops_end(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    os.symlink("loop2", tmp_path / "lib/loop1")
    os.symlink("loop1", tmp_path / "lib/loop2")
    os.symlink("self/x", tmp_path / "lib/self")
    lib(tmp_path, "/bin/app", needed=["/lib/loop1", "/lib/self/liba.so"])
    res = resolve("/bin/app", tmp_path, allow_missing=True)
    assert [m.name for m in res.missing] == ["/lib/loop1", "/lib/self/liba.so"]


def test_ld_so_conf_include_cycle_through_symlinked_folder(tmp_path: Path) -> None:
    lib(tmp_path, "/opt/lib/liba.so")
    lib(tmp_path, "/bin/app", needed=["liba.so"])
    confd = tmp_path / "etc/ld.so.conf.d"
    confd.mkdir(parents=True)
    (tmp_path / "etc/ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n/usr/x\n")
    (confd / "a.conf").write_text("/opt/lib\ninclude loop/*.conf\ninclude /etc/ld.so.conf\n")
    (confd / "b.conf").write_text("include ../ld.so.conf.d/*.conf\n/opt/b\n")
    os.symlink(".", confd / "loop")  # a folder that contains itself
    resolver = Resolver(tmp_path, emulate_ldconfig=True)
    assert resolver._ld_so_conf() == ["/opt/lib", "/opt/b", "/usr/x"]
    assert resolver.resolve("/bin/app").libraries[0].found_via == "ld.so.conf"


def test_ld_so_conf_include_order_is_ldconfigs(tmp_path: Path) -> None:
    confd = tmp_path / "etc/ld.so.conf.d"
    confd.mkdir(parents=True)
    (tmp_path / "etc/ld.so.conf").write_text("/first\ninclude ld.so.conf.d/*.conf\n/last\n")
    (confd / "1.conf").write_text("/one\ninclude /etc/ld.so.conf.d/2.conf\n/one-after\n")
    (confd / "2.conf").write_text("/two\n")
    resolver = Resolver(tmp_path)
    assert resolver._ld_so_conf() == ["/first", "/one", "/two", "/one-after", "/last"]


def test_bad_interpreter_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "lib64").mkdir()
    (tmp_path / "lib64/ld.so").write_bytes(b"\x7fELF" + bytes(10))
    lib(tmp_path, "/bin/app", needed=["liba.so"], interp="/lib64/ld.so")
    with pytest.raises(NotAnElf):
        resolve("/bin/app", tmp_path)
