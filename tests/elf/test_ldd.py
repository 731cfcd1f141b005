"""The resolver against the real loaders.

Oracles: ``ldd`` for every program of the host, and, for programs built here, the list of
objects the loader really mapped, printed by the program itself with ``dl_iterate_phdr``
(run directly, or with ``chroot`` inside a test root).
"""

from __future__ import annotations

import builtins
import json
import os
import platform
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pyops.cli import cli
from pyops.elf.ldd import Resolution, Resolver, format_tree, resolve
from pyops.elf.reader import read_elf, read_version_definitions
from pyops.errors import ElfMismatch, LibraryNotFound, NotAnElf, PyopsError

X86_64_GLIBC = platform.machine() == "x86_64" and os.path.exists("/lib64/ld-linux-x86-64.so.2")
needs_x86_64_glibc = pytest.mark.skipif(
    not X86_64_GLIBC, reason="needs an x86-64 glibc host (/lib64/ld-linux-x86-64.so.2)"
)
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chroot needs root"
)

# The probe prints the name of every object the loader mapped, in link-map order.
PROBE = r"""
#define _GNU_SOURCE
#include <link.h>
#include <stdio.h>
%(decls)s
static int show(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size; (void)data;
    printf("%%s\n", info->dlpi_name);
    return 0;
}
int main(void) { %(calls)s dl_iterate_phdr(show, 0); return 0; }
"""


def probe_source(*functions: str) -> str:
    decls = "".join(f"int {f}(void);\n" for f in functions)
    calls = "".join(f"{f}(); " for f in functions)
    return PROBE % {"decls": decls, "calls": calls}


def compile_to(cc: str, out: Path, source: str, *flags: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.parent / f".{out.name}.c"
    src.write_text(source)
    subprocess.run([cc, "-o", str(out), str(src), *flags], check=True, capture_output=True)
    return out


def shared(cc: str, out: Path, body: str, *flags: str, soname: str | None = None) -> Path:
    extra = [f"-Wl,-soname,{soname}"] if soname else []
    return compile_to(cc, out, body, "-shared", "-fPIC", *extra, *flags)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    env.update(extra)
    return env


def run_probe(
    argv: Sequence[str], env: dict[str, str] | None = None
) -> tuple[bool, list[str], str]:
    """Run a probe: (ran, objects the loader mapped except the program and the vDSO, stderr)."""
    done = subprocess.run(list(argv), capture_output=True, text=True, env=env or clean_env())
    names = done.stdout.splitlines()[1:]  # the first object is the program itself
    names = [n for n in names if n and not n.startswith(("linux-vdso", "linux-gate"))]
    return done.returncode == 0, names, done.stderr


def in_chroot(root: Path, program: str) -> tuple[bool, list[str], str]:
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    if not os.path.exists(chroot):
        pytest.skip("chroot is not installed")
    return run_probe([chroot, str(root), program], env={"PATH": "/usr/bin:/bin"})


def assert_same_as_loader(res: Resolution, mapped: list[str]) -> None:
    """The resolver's libraries, in load order, and the interpreter are what was mapped."""
    interp = res.interpreter.path if res.interpreter else None
    assert interp in mapped
    assert [lib.path for lib in res.libraries] == [p for p in mapped if p != interp]


def searched_before_cache(missing_searched: Sequence[str]) -> list[str]:
    out: list[str] = []
    for entry in missing_searched:
        if entry == "/etc/ld.so.cache":
            break
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------
# Every program of the host, against ldd


def parse_ldd(text: str) -> tuple[list[tuple[str, str]], set[str]]:
    """ldd output as ([(name, path)], {missing names}); the vDSO has no file."""
    found: list[tuple[str, str]] = []
    missing: set[str] = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("linux-vdso", "linux-gate")):
            continue
        if "=>" in line:
            name, rest = (part.strip() for part in line.split("=>", 1))
            if rest.startswith("not found"):
                missing.add(name)
            else:
                found.append((name, rest.rsplit(" (", 1)[0]))
        else:
            # "path (0x...)": an object whose name is its path (the interpreter).
            path = line.rsplit(" (", 1)[0]
            found.append((path, path))
    return found, missing


def host_programs() -> Iterator[tuple[str, str]]:
    for directory in ("/usr/bin", "/usr/sbin"):
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                continue
            try:
                info = read_elf(path)
            except PyopsError:
                continue  # scripts and unreadable files
            if info.interpreter and not os.path.basename(info.interpreter).startswith("ld-musl"):
                yield path, info.interpreter


@needs_x86_64_glibc
def test_every_host_program_matches_ldd() -> None:
    if shutil.which("ldd") is None:
        pytest.skip("ldd is not installed")
    programs = list(host_programs())
    env = clean_env()

    def run_ldd(path: str) -> str:
        # ldd takes $ORIGIN of the program from the path it is given, the real loader from
        # the resolved path: give ldd the resolved path so both mean the same file.
        real = os.path.realpath(path)
        return subprocess.run(["ldd", real], capture_output=True, text=True, env=env).stdout

    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(run_ldd, [p for p, _ in programs]))
    resolver = Resolver(None, env={})
    differences: list[str] = []
    compared = 0
    for (path, interp), output in zip(programs, outputs, strict=True):
        expected, expected_missing = parse_ldd(output)
        if not expected and not expected_missing:
            continue  # ldd could not handle it (for example another machine)
        compared += 1
        res = resolver.resolve(path, allow_missing=True)
        got = [(lib.name, lib.path) for lib in res.libraries]
        if res.interpreter is not None:
            got.append((res.interpreter.path, res.interpreter.path))
        missing = {m.name for m in res.missing}
        # Same objects, same paths as the loader prints them, same load order.
        in_order = [item for item in expected if item[0] != interp]
        if sorted(got) != sorted(expected) or missing != expected_missing:
            differences.append(f"{path}:\n  ldd:   {expected} {expected_missing}\n  pyops: {got}")
        elif [(lib.name, lib.path) for lib in res.libraries] != in_order:
            differences.append(f"{path}: load order differs from ldd")
    print(f"compared {compared} dynamic programs of /usr/bin and /usr/sbin with ldd")
    assert compared > 0
    assert not differences, "\n".join(differences)


# ---------------------------------------------------------------------------------------
# Search rules, each checked against the real loader


@pytest.fixture()
def chain_libs(cc: str, tmp_path: Path) -> tuple[Path, Path]:
    """B/libbar.so needs Z/libbaz.so (which has no path of its own to it)."""
    z = tmp_path / "Z"
    b = tmp_path / "B"
    shared(cc, z / "libbaz.so", "int baz(void) { return 7; }\n")
    shared(
        cc, b / "libbar.so", "int baz(void);\nint bar(void) { return baz(); }\n", f"-L{z}", "-lbaz"
    )
    return b, z


@needs_x86_64_glibc
def test_rpath_is_inherited(cc: str, tmp_path: Path, chain_libs: tuple[Path, Path]) -> None:
    b, z = chain_libs
    prog = compile_to(
        cc,
        tmp_path / "old",
        probe_source("bar"),
        f"-L{b}",
        "-lbar",
        f"-Wl,-rpath-link,{z}",
        f"-Wl,--disable-new-dtags,-rpath,{b}:{z}",
    )
    assert read_elf(prog).rpath == f"{b}:{z}"
    ran, mapped, err = run_probe([str(prog)])
    assert ran, err
    res = resolve(prog, env={})
    assert_same_as_loader(res, mapped)
    baz = next(lib for lib in res.libraries if lib.name == "libbaz.so")
    assert baz.found_via == "rpath" and baz.needed_by == f"{b}/libbar.so"


@needs_x86_64_glibc
def test_runpath_is_not_inherited(
    cc: str, tmp_path: Path, chain_libs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    b, z = chain_libs
    prog = compile_to(
        cc,
        tmp_path / "new",
        probe_source("bar"),
        f"-L{b}",
        "-lbar",
        f"-Wl,-rpath-link,{z}",
        f"-Wl,--enable-new-dtags,-rpath,{b}:{z}",
    )
    assert read_elf(prog).runpath == f"{b}:{z}"
    ran, _, err = run_probe([str(prog)])
    assert not ran and "libbaz.so" in err  # the real loader fails
    # The host's LD_LIBRARY_PATH must not matter: only the image's environment counts.
    monkeypatch.setenv("LD_LIBRARY_PATH", str(z))
    with pytest.raises(LibraryNotFound) as caught:
        resolve(prog, env={})
    error = caught.value
    assert error.library == "libbaz.so"
    assert error.needed_by == f"{b}/libbar.so"
    assert str(z) not in error.searched and "/etc/ld.so.cache" in error.searched
    assert all(d in str(error) for d in error.searched)
    res = resolve(prog, env={}, allow_missing=True)
    assert [(m.name, m.needed_by) for m in res.missing] == [("libbaz.so", f"{b}/libbar.so")]
    # With LD_LIBRARY_PATH in the program's own environment, both find it.
    ran, mapped, err = run_probe([str(prog)], env=clean_env(LD_LIBRARY_PATH=str(z)))
    assert ran, err
    found = resolve(prog, env={"LD_LIBRARY_PATH": str(z)})
    assert_same_as_loader(found, mapped)
    assert next(x for x in found.libraries if x.name == "libbaz.so").found_via == "LD_LIBRARY_PATH"


@needs_x86_64_glibc
def test_library_origin_through_a_symlinked_directory(cc: str, tmp_path: Path) -> None:
    real = tmp_path / "realdir"
    link = tmp_path / "symdir"
    shared(cc, real / "libr.so", "int r(void) { return 1; }\n")
    shared(
        cc,
        real / "libq.so",
        "int r(void);\nint q(void) { return r(); }\n",
        f"-L{real}",
        "-lr",
        "-Wl,--enable-new-dtags,-rpath,$ORIGIN",
    )
    link.mkdir()
    (link / "libq.so").symlink_to("../realdir/libq.so")
    prog = compile_to(
        cc,
        tmp_path / "prog",
        probe_source("q"),
        f"-L{link}",
        "-lq",
        f"-Wl,-rpath-link,{real}",
        f"-Wl,--enable-new-dtags,-rpath,{link}",
    )
    ran, _, err = run_probe([str(prog)])
    # $ORIGIN of libq.so is the directory it was opened from, symdir: libr.so is not there.
    assert not ran and "libr.so" in err
    res = resolve(prog, env={}, allow_missing=True)
    assert [(m.name, m.needed_by) for m in res.missing] == [("libr.so", f"{link}/libq.so")]
    assert f"{link}" in res.missing[0].searched
    libq = res.libraries[0]
    assert libq.path == f"{link}/libq.so"
    assert libq.chain == (f"{link}/libq.so", f"{real}/libq.so")


@needs_x86_64_glibc
def test_program_origin_through_a_symlink(cc: str, tmp_path: Path) -> None:
    app = tmp_path / "app"
    shared(cc, app / "lib" / "libx.so", "int x(void) { return 0; }\n")
    prog = compile_to(
        cc,
        app / "bin" / "app",
        probe_source("x"),
        f"-L{app / 'lib'}",
        "-lx",
        "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../lib",
    )
    (tmp_path / "link").mkdir()
    through = tmp_path / "link" / "app"
    through.symlink_to("../app/bin/app")
    ran, mapped, err = run_probe([str(through)])
    assert ran, err
    # The executable's $ORIGIN is the directory of its resolved path.
    res = resolve(through, env={})
    assert_same_as_loader(res, mapped)
    assert res.program.real_path == str(prog)
    assert res.program.chain == (str(through), str(prog))


@needs_x86_64_glibc
def test_dynamic_string_tokens(cc: str, tmp_path: Path) -> None:
    # $PLATFORM is left out: its value is the guest's, not this host's (next test).
    runpath = "/nonexistent/${LIB}:/nonexistent/$LIBX:/n/$FOO:$ORIGIN/o"
    shared(cc, tmp_path / "stub" / "libgone.so", "int gone(void) { return 0; }\n")
    prog = compile_to(
        cc,
        tmp_path / "prog",
        probe_source("gone"),
        f"-L{tmp_path / 'stub'}",
        "-lgone",
        f"-Wl,--enable-new-dtags,-rpath,{runpath}",
    )
    done = subprocess.run(
        [str(prog)], capture_output=True, text=True, env=clean_env(LD_DEBUG="libs")
    )
    assert done.returncode != 0
    line = next(x for x in done.stderr.splitlines() if "RUNPATH from file" in x)
    elements = line.split("search path=", 1)[1].split("\t")[0].strip().split(":")
    # The loader also tries hwcaps subdirectories of each directory; keep the directories.
    loader_dirs = [e for e in elements if not any(e.startswith(o + "/") for o in elements)]
    res = resolve(prog, env={}, allow_missing=True)
    assert searched_before_cache(res.missing[0].searched) == loader_dirs


def test_platform_token_takes_every_value_the_guest_loader_may_take(
    cc: str, tmp_path: Path
) -> None:
    # Nanos passes no AT_PLATFORM, so an x86-64 guest's glibc has no $PLATFORM on most CPUs
    # (TCG, AMD) and "haswell" or "xeon_phi" on Intel ones: the image needs the library each
    # of them would load, whatever CPU builds the image.
    body = "int foo(void) { return 0; }\n"
    fallback = shared(cc, tmp_path / "fallback" / "libfoo.so", body, soname="libfoo.so")
    tuned = shared(cc, tmp_path / "p" / "haswell" / "libfoo.so", body, soname="libfoo.so")
    runpath = "$ORIGIN/p/$PLATFORM:$ORIGIN/p/${PLATFORM}x:$ORIGIN/fallback"
    prog = compile_to(
        cc,
        tmp_path / "prog",
        probe_source("foo"),
        str(fallback),
        f"-Wl,--enable-new-dtags,-rpath,{runpath}",
    )
    res = resolve(prog, env={})
    assert {lib.path for lib in res.libraries if lib.name == "libfoo.so"} == {
        str(fallback),
        str(tuned),
    }
    # Only the library under p/haswell: a guest without $PLATFORM cannot load it.
    fallback.unlink()
    res = resolve(prog, env={}, allow_missing=True)
    assert [lib.path for lib in res.libraries if lib.name == "libfoo.so"] == [str(tuned)]
    (missing,) = res.missing
    assert missing.name == "libfoo.so"
    assert searched_before_cache(missing.searched) == [f"{tmp_path}/fallback"]
    with pytest.raises(LibraryNotFound):
        resolve(prog, env={})


@needs_x86_64_glibc
def test_versioned_soname_chain(cc: str, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    shared(cc, lib / "libfoo.so.1.2.3", "int foo(void) { return 0; }\n", soname="libfoo.so.1")
    (lib / "libfoo.so.1").symlink_to("libfoo.so.1.2.3")
    (lib / "libfoo.so").symlink_to("libfoo.so.1")
    prog = compile_to(
        cc, tmp_path / "prog", probe_source("foo"), f"-L{lib}", "-lfoo", f"-Wl,-rpath,{lib}"
    )
    assert "libfoo.so.1" in read_elf(prog).needed
    ran, mapped, err = run_probe([str(prog)])
    assert ran, err
    res = resolve(prog, env={})
    assert_same_as_loader(res, mapped)
    paths = res.paths()
    assert f"{lib}/libfoo.so.1" in paths and f"{lib}/libfoo.so.1.2.3" in paths
    assert f"{lib}/libfoo.so" not in paths  # the linker's link is not needed at run time
    assert list(paths) == sorted(paths)


def elf32_i386_header() -> bytes:
    """A 32-bit i386 ELF header, padded so a 64-bit loader can read a whole Elf64_Ehdr."""
    ident = b"\x7fELF" + bytes([1, 1, 1, 0]) + bytes(8)
    header = struct.pack("<16sHHIIIIIHHHHHH", ident, 3, 3, 1, 0, 0, 0, 0, 52, 32, 0, 40, 0, 0)
    return header + bytes(512 - len(header))


@needs_x86_64_glibc
def test_wrong_class_and_machine_decoys_are_skipped(cc: str, tmp_path: Path) -> None:
    real = tmp_path / "real"
    built = shared(cc, real / "libfoo.so.1", "int foo(void) { return 0; }\n", soname="libfoo.so.1")
    (tmp_path / "w32").mkdir()
    (tmp_path / "w32" / "libfoo.so.1").write_bytes(elf32_i386_header())
    arm = bytearray(built.read_bytes())
    struct.pack_into("<H", arm, 18, 183)  # e_machine = EM_AARCH64
    (tmp_path / "warm").mkdir()
    (tmp_path / "warm" / "libfoo.so.1").write_bytes(bytes(arm))
    prog = compile_to(cc, tmp_path / "prog", probe_source("foo"), str(built))
    search = f"{tmp_path / 'w32'}:{tmp_path / 'warm'}:{real}"
    ran, mapped, err = run_probe([str(prog)], env=clean_env(LD_LIBRARY_PATH=search))
    assert ran, err
    res = resolve(prog, env={"LD_LIBRARY_PATH": search})
    assert_same_as_loader(res, mapped)
    assert res.libraries[0].path == f"{real}/libfoo.so.1"


@needs_x86_64_glibc
def test_a_non_elf_candidate_stops_the_search(cc: str, tmp_path: Path) -> None:
    real = tmp_path / "real"
    built = shared(cc, real / "libfoo.so.1", "int foo(void) { return 0; }\n", soname="libfoo.so.1")
    script = tmp_path / "script"
    script.mkdir()
    (script / "libfoo.so.1").write_text("/* GNU ld script */\nGROUP ( libfoo.so.1 )\n" * 8)
    prog = compile_to(cc, tmp_path / "prog", probe_source("foo"), str(built))
    search = f"{script}:{real}"
    ran, _, err = run_probe([str(prog)], env=clean_env(LD_LIBRARY_PATH=search))
    assert not ran and "invalid ELF header" in err
    with pytest.raises(NotAnElf, match="invalid ELF header"):
        resolve(prog, env={"LD_LIBRARY_PATH": search})
    res = resolve(prog, env={"LD_LIBRARY_PATH": search}, allow_missing=True)
    assert res.missing[0].name == "libfoo.so.1"


# ---------------------------------------------------------------------------------------
# Inside a root


def host_file(cc: str, name: str) -> Path:
    found = subprocess.run(
        [cc, f"-print-file-name={name}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not os.path.isabs(found):
        pytest.skip(f"{cc} does not know where {name} is")
    return Path(os.path.realpath(found))


def debian_root(cc: str, root: Path, *, lib_link: str = "usr/lib") -> Path:
    """A merged-/usr root like Debian's: /lib -> usr/lib, an absolute link for the loader."""
    libdir = root / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    (root / "usr/lib64").mkdir()
    (root / "usr/bin").mkdir()
    (root / "etc").mkdir()
    (root / "lib").symlink_to(lib_link)
    (root / "lib64").symlink_to("usr/lib64")
    (root / "bin").symlink_to("usr/bin")
    shutil.copy2(os.path.realpath("/lib64/ld-linux-x86-64.so.2"), libdir / "ld-linux-x86-64.so.2")
    (root / "usr/lib64/ld-linux-x86-64.so.2").symlink_to(
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    )
    shutil.copy2(host_file(cc, "libc.so.6"), libdir / "libc.so.6")
    return libdir


class AccessLog:
    """Records every path the resolver hands to the operating system."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        for name in ("lstat", "stat", "open", "listdir", "readlink", "scandir"):
            self._wrap(monkeypatch, os, name)
        self._wrap(monkeypatch, builtins, "open")

    def _wrap(self, monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
        original = getattr(module, name)

        def recorded(path: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(path, (str, bytes, os.PathLike)):
                self.paths.append(os.fsdecode(path))
            return original(path, *args, **kwargs)

        monkeypatch.setattr(module, name, recorded)


@needs_x86_64_glibc
def test_merged_usr_root_points_only_into_the_root(
    cc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    libdir = debian_root(cc, root)
    # A libz.so.1 of a version the host does not have, reached through a soname link.
    shared(cc, libdir / "libz.so.1.99.0", "int zver(void) { return 99; }\n", soname="libz.so.1")
    (libdir / "libz.so.1").symlink_to("libz.so.1.99.0")
    compile_to(cc, root / "usr/bin/app", probe_source("zver"), str(libdir / "libz.so.1"))
    host_libz = os.path.realpath("/lib/x86_64-linux-gnu/libz.so.1")

    log = AccessLog(monkeypatch)
    res = resolve("/usr/bin/app", root, env={})
    monkeypatch.undo()
    outside = [p for p in log.paths if not p.startswith(f"{root}/") and p != str(root)]
    assert log.paths and not outside, f"read outside the root: {outside}"

    for item in res.files():
        assert item.host_path.startswith(f"{root}/"), item
        assert os.path.exists(item.host_path)
    assert res.interpreter is not None and res.interpreter.path == "/lib64/ld-linux-x86-64.so.2"
    assert res.interpreter.chain == (
        "/lib64",
        "/usr/lib64/ld-linux-x86-64.so.2",
        "/lib",
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    )
    libz = next(lib for lib in res.libraries if lib.name == "libz.so.1")
    assert libz.real_path == "/usr/lib/x86_64-linux-gnu/libz.so.1.99.0"
    assert libz.host_path != host_libz
    assert "/usr/lib/x86_64-linux-gnu/libz.so.1" in res.paths()
    # No path to package goes through a symlinked directory.
    for entry in res.paths():
        parent = os.path.dirname(entry)
        assert not (root / parent.lstrip("/")).is_symlink() or parent == "/"
        assert os.path.realpath(root / parent.lstrip("/")) == str(root / parent.lstrip("/"))

    if os.geteuid() == 0:
        ran, mapped, err = in_chroot(root, "/usr/bin/app")
        assert ran, err
        assert_same_as_loader(res, mapped)

    result = CliRunner().invoke(cli, ["ldd", "--root", str(root), "--json", "/usr/bin/app"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["paths"] == list(res.paths())
    assert all(lib["host_path"].startswith(f"{root}/") for lib in data["libraries"])


@needs_x86_64_glibc
def test_absolute_directory_link_does_not_leak_to_the_host(cc: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    # /lib -> /usr/lib is absolute; a library missing from the image but present on the
    # host at /usr/lib/x86_64-linux-gnu must stay missing.
    debian_root(cc, root, lib_link="/usr/lib")
    stub = shared(
        cc, tmp_path / "stub" / "libz.so.1", "int zver(void) { return 1; }\n", soname="libz.so.1"
    )
    compile_to(cc, root / "usr/bin/app", probe_source("zver"), str(stub))
    res = resolve("/usr/bin/app", root, env={}, allow_missing=True)
    assert [m.name for m in res.missing] == ["libz.so.1"]
    assert all(item.host_path.startswith(f"{root}/") for item in res.files())
    if os.geteuid() == 0:
        ran, _, err = in_chroot(root, "/usr/bin/app")
        assert not ran and "libz.so.1" in err


@needs_x86_64_glibc
@needs_root
def test_library_reachable_only_through_ld_so_conf_d(cc: str, tmp_path: Path) -> None:
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    if not os.path.exists(ldconfig):
        pytest.skip("ldconfig is not installed")
    root = tmp_path / "root"
    debian_root(cc, root)
    vendor = root / "opt/vendor/lib"
    built = shared(
        cc, vendor / "libvendor.so.1", "int v(void) { return 3; }\n", soname="libvendor.so.1"
    )
    (root / "etc/ld.so.conf").write_text("# test\ninclude /etc/ld.so.conf.d/*.conf\n")
    (root / "etc/ld.so.conf.d").mkdir()
    (root / "etc/ld.so.conf.d/vendor.conf").write_text("/opt/vendor/lib/  # trailing slash\n")
    compile_to(cc, root / "usr/bin/app", probe_source("v"), str(built))
    subprocess.run([ldconfig, "-r", str(root)], check=True, capture_output=True)

    ran, mapped, err = in_chroot(root, "/usr/bin/app")
    assert ran, err
    res = resolve("/usr/bin/app", root, env={})
    assert_same_as_loader(res, mapped)
    vendor_lib = next(lib for lib in res.libraries if lib.name == "libvendor.so.1")
    assert vendor_lib.found_via == "ld.so.cache"

    # Without the cache the loader never looks there (it does not read ld.so.conf).
    (root / "etc/ld.so.cache").unlink()
    ran, _, err = in_chroot(root, "/usr/bin/app")
    assert not ran and "libvendor.so.1" in err
    with pytest.raises(LibraryNotFound) as caught:
        resolve("/usr/bin/app", root, env={})
    assert caught.value.hint is not None and "ld.so.conf" in caught.value.hint
    emulated = resolve("/usr/bin/app", root, env={}, emulate_ldconfig=True)
    assert [lib.path for lib in emulated.libraries if lib.name == "libvendor.so.1"] == [
        "/opt/vendor/lib/libvendor.so.1"
    ]


def musl_gcc() -> str:
    found = shutil.which("musl-gcc")
    if found is None:
        pytest.skip("musl-gcc is not installed (Debian: musl-tools)")
    return found


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the musl root is built for x86-64")
def test_musl_program_in_a_musl_root(tmp_path: Path) -> None:
    mcc = musl_gcc()
    root = tmp_path / "root"
    (root / "lib").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr/bin").mkdir(parents=True)
    # musl's libc.so is its loader; the musl package installs it under the PT_INTERP name.
    host_loader = Path(os.path.realpath("/lib/ld-musl-x86_64.so.1"))
    if not host_loader.is_file():
        pytest.skip("the musl loader /lib/ld-musl-x86_64.so.1 is not installed")
    shutil.copy2(host_loader, root / "lib/ld-musl-x86_64.so.1")
    built = shared(
        mcc, root / "opt/app/lib/libfoo.so.1", "int foo(void) { return 0; }\n", soname="libfoo.so.1"
    )
    # A wrong-class file later in the path is never reached.
    (root / "usr/lib").mkdir()
    (root / "usr/lib/libfoo.so.1").write_bytes(elf32_i386_header())
    (root / "etc/ld-musl-x86_64.path").write_text("/opt/app/lib\n/usr/lib\n")
    compile_to(mcc, root / "usr/bin/app", probe_source("foo"), str(built))
    info = read_elf(root / "usr/bin/app")
    assert info.interpreter == "/lib/ld-musl-x86_64.so.1"

    res = resolve("/usr/bin/app", root, env={})
    assert res.libc == "musl"
    assert [lib.path for lib in res.libraries] == ["/opt/app/lib/libfoo.so.1"]
    assert res.interpreter is not None
    # libc.so is answered by the loader itself.
    assert ("libc.so", res.interpreter.path) in res.program.needed
    assert "libc.so" in format_tree(res)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        ran, mapped, err = in_chroot(root, "/usr/bin/app")
        assert ran, err
        assert_same_as_loader(res, mapped)

    # Without the path file musl searches /lib:/usr/local/lib:/usr/lib, and it does not
    # skip a file of the wrong class: loading stops there.
    (root / "etc/ld-musl-x86_64.path").unlink()
    res = resolve("/usr/bin/app", root, env={}, allow_missing=True)
    assert [m.name for m in res.missing] == ["libfoo.so.1"]
    assert "Exec format error" in res.missing[0].reason
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        ran, _, err = in_chroot(root, "/usr/bin/app")
        assert not ran and "libfoo.so.1" in err


# ---------------------------------------------------------------------------------------
# Run-time extras, bad input, the command line


@needs_x86_64_glibc
def test_runtime_extras_in_a_root(cc: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    libdir = debian_root(cc, root)
    shared(cc, libdir / "libmydep.so.1", "int d(void) { return 0; }\n", soname="libmydep.so.1")
    shared(
        cc,
        libdir / "libnss_mymod.so.2",
        "int d(void);\nint m(void) { return d(); }\n",
        f"-L{libdir}",
        "-l:libmydep.so.1",
        soname="libnss_mymod.so.2",
    )
    (root / "etc/nsswitch.conf").write_text(
        "passwd: files mymod\nhosts: files [NOTFOUND=return] dns absentmod\n"
    )
    compile_to(cc, root / "usr/bin/app", probe_source())
    res = resolve("/usr/bin/app", root, env={})
    extras = {extra.name: extra for extra in res.runtime_extras}
    modern = "GLIBC_2.34" in read_version_definitions(libdir / "libc.so.6")
    assert extras["libnss_mymod.so.2"].file is not None
    assert extras["libmydep.so.1"].file is not None  # its own dependency comes along
    assert extras["libnss_absentmod.so.2"].file is None
    assert ("libnss_files.so.2" in extras) is not modern
    assert extras["libgcc_s.so.1"].file is None  # not in this root
    assert extras["/etc/nsswitch.conf"].file is not None and extras["/etc/hosts"].file is None
    assert not res.missing
    assert "/usr/lib/x86_64-linux-gnu/libnss_mymod.so.2" not in res.paths()
    with_extras = resolve("/usr/bin/app", root, env={}, include_runtime_extras=True)
    assert "/usr/lib/x86_64-linux-gnu/libnss_mymod.so.2" in with_extras.paths()
    assert "/etc/nsswitch.conf" in with_extras.paths()


@needs_x86_64_glibc
def test_bad_programs(cc: str, tmp_path: Path) -> None:
    text = tmp_path / "text"
    text.write_text("hello\n")
    with pytest.raises(NotAnElf):
        resolve(text)
    prog = compile_to(cc, tmp_path / "prog", probe_source())
    cut = tmp_path / "cut"
    cut.write_bytes(prog.read_bytes()[:200])
    with pytest.raises(NotAnElf, match="truncated|corrupt"):
        resolve(cut)
    with pytest.raises(ElfMismatch):
        resolve(prog, machine="arm64")
    assert resolve(prog, machine="amd64").program.path == str(prog)
    with pytest.raises(PyopsError, match="does not exist"):
        resolve("/usr/bin/app", tmp_path)
    static = tmp_path / "static"
    try:
        compile_to(cc, static, "int main(void) { return 0; }\n", "-static")
    except subprocess.CalledProcessError:
        pytest.skip("no static libc")
    res = resolve(static)
    assert res.interpreter is None and not res.libraries and res.paths() == (str(static),)


@needs_x86_64_glibc
def test_cli(cc: str, tmp_path: Path, chain_libs: tuple[Path, Path]) -> None:
    b, z = chain_libs
    prog = compile_to(
        cc,
        tmp_path / "new",
        probe_source("bar"),
        f"-L{b}",
        "-lbar",
        f"-Wl,-rpath-link,{z}",
        f"-Wl,--enable-new-dtags,-rpath,{b}:{z}",
    )
    runner = CliRunner()
    failed = runner.invoke(cli, ["ldd", str(prog)])
    assert failed.exit_code != 0
    assert "libbaz.so" in failed.output and f"{b}/libbar.so" in failed.output
    assert "/lib/x86_64-linux-gnu" in failed.output  # the directories searched

    allowed = runner.invoke(cli, ["ldd", "--allow-missing", str(prog)])
    assert allowed.exit_code == 0, allowed.output
    assert re.search(r"libbaz\.so => not found", allowed.output)

    env = runner.invoke(cli, ["ldd", "--env", f"LD_LIBRARY_PATH={z}", str(prog)])
    assert env.exit_code == 0, env.output
    tree = env.output.splitlines()
    assert tree[0].startswith(f"{prog} (interpreter => ")
    assert f"    libbar.so => {b}/libbar.so" in tree
    assert f"        libbaz.so => {z}/libbaz.so" in tree

    listed = runner.invoke(cli, ["ldd", "--list", "--env", f"LD_LIBRARY_PATH={z}", str(prog)])
    assert listed.output.split() == list(resolve(prog, env={"LD_LIBRARY_PATH": str(z)}).paths())

    not_elf = runner.invoke(cli, ["ldd", str(tmp_path / "new.c")])
    assert not_elf.exit_code != 0
    wrong = runner.invoke(cli, ["ldd", "--machine", "arm64", str(prog)])
    assert wrong.exit_code != 0 and "EM_AARCH64" in wrong.output
    bad_env = runner.invoke(cli, ["ldd", "--env", "NOEQUALS", str(prog)])
    assert bad_env.exit_code != 0


@needs_x86_64_glibc
def test_preload_from_the_image_environment(cc: str, tmp_path: Path) -> None:
    pre = shared(cc, tmp_path / "pre" / "libpre.so", "int pre(void) { return 0; }\n")
    prog = compile_to(cc, tmp_path / "prog", probe_source())
    ran, mapped, err = run_probe([str(prog)], env=clean_env(LD_PRELOAD=str(pre)))
    assert ran, err
    res = resolve(prog, env={"LD_PRELOAD": str(pre)})
    assert_same_as_loader(res, mapped)
    assert res.libraries[0].path == str(pre)
    assert f"{pre} (preloaded)" in format_tree(res)
    # A preload that cannot be found is skipped by the loader, with a warning.
    ran, _, err = run_probe([str(prog)], env=clean_env(LD_PRELOAD="libabsent.so"))
    assert ran and "libabsent.so" in err
    res = resolve(prog, env={"LD_PRELOAD": "libabsent.so"})
    assert [(m.name, m.fatal) for m in res.missing] == [("libabsent.so", False)]


@needs_x86_64_glibc
def test_missing_interpreter(cc: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    prog = compile_to(cc, root / "usr/bin/app", probe_source())
    interp = read_elf(prog).interpreter
    with pytest.raises(LibraryNotFound) as caught:
        resolve("/usr/bin/app", root, env={})
    assert caught.value.library == interp and caught.value.hint is not None
    res = resolve("/usr/bin/app", root, env={}, allow_missing=True)
    assert res.interpreter is None
    assert res.missing[0].name == interp and res.missing[0].reason == "interpreter not found"
    assert {m.name for m in res.missing} >= set(read_elf(prog).needed)


@needs_x86_64_glibc
def test_dot_dot_and_links_never_climb_out_of_the_root(
    cc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    debian_root(cc, root)
    stub = shared(
        cc, tmp_path / "stub" / "libz.so.1", "int zver(void) { return 1; }\n", soname="libz.so.1"
    )
    compile_to(cc, root / "usr/bin/app", probe_source("zver"), str(stub))
    # On the host these all lead to directories holding libz.so.1 (the stub's, and the
    # host's own when zlib is installed); inside the root they lead nowhere.
    depth = "/".join([".."] * (len(root.parts) + 2))
    (root / "opt").mkdir()
    (root / "opt/up").symlink_to(f"{depth}{tmp_path / 'stub'}")
    (root / "opt/abs").symlink_to(str(tmp_path / "stub"))
    search = ":".join(
        [
            f"/{depth}{tmp_path / 'stub'}",
            "/opt/up",
            "/opt/abs",
            "/opt/../../../usr/lib/x86_64-linux-gnu/../../../../..",
        ]
    )
    log = AccessLog(monkeypatch)
    res = resolve("/usr/bin/app", root, env={"LD_LIBRARY_PATH": search}, allow_missing=True)
    monkeypatch.undo()
    assert [m.name for m in res.missing] == ["libz.so.1"]
    assert all(p.startswith(f"{root}/") or p == str(root) for p in log.paths)
    # The same library placed at the root's own /<stub dir> is found through each form.
    inside = root / str(tmp_path / "stub").lstrip("/")
    inside.mkdir(parents=True)
    shutil.copy2(stub, inside / "libz.so.1")
    for element in search.split(":")[:3]:
        found = resolve("/usr/bin/app", root, env={"LD_LIBRARY_PATH": element})
        libz = next(lib for lib in found.libraries if lib.name == "libz.so.1")
        assert libz.real_path == str(tmp_path / "stub" / "libz.so.1")
        assert libz.host_path == str(inside / "libz.so.1")
