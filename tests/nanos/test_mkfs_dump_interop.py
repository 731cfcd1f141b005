"""``pyops mkfs`` and ``pyops dump`` against Nanos's own ``mkfs`` and ``dump``.

``PYOPS_NANOS_MKFS`` and ``PYOPS_NANOS_DUMP`` name Nanos's tools (built from its sources);
a Nanos release (``PYOPS_NANOS_RELEASE``, or one installed in the pyops cache) gives the
boot.img, kernel and UEFI loader. Tests that need them skip without them.
"""

from __future__ import annotations

import hashlib
import os
import pty
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pyops.cli import cli
from pyops.nanos.disk import KLOG_SIZE, open_image
from pyops.nanos.manifest_text import parse_manifest
from pyops.nanos.mkfs import MkfsOptions, mkfs
from pyops.nanos.tfs import read_volume
from pyops.nanos.tree import Tree
from pyops.nanos.tuples import to_text

from ..conftest import compile_c, find_release, fixture_source
from .test_manifest_text import as_the_makefile_feeds_it, nanos_manifests
from .test_tfs_interop import host_listing, image_listing, tool

UUID_LINE = re.compile(rb"^UUID: [0-9a-f-]{36}$", re.M)


def release() -> Path:
    folder, why = find_release()
    if folder is None:
        pytest.skip(why)
    return folder


def host_paths(value: Any) -> list[str]:
    """Every contents:(host:PATH) of a manifest tuple."""
    out: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            contents = item.get("contents")
            if isinstance(contents, dict) and isinstance(contents.get("host"), str):
                out.append(contents["host"])
            stack.extend(item.values())
    return out


def fake_host_files(root: dict[str, Any], target: Path) -> None:
    """A stand-in for each host file, under ``target`` (as mkfs -r looks them up)."""
    for name in host_paths(root):
        path = target / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        seed = hashlib.sha256(name.encode()).digest()
        path.write_bytes(seed * (seed[0] * 7))  # 0 to 57,000 bytes


def run_nanos_mkfs(args: list[str], manifest: str | None, cwd: Path) -> bytes:
    run = subprocess.run(
        [str(tool("mkfs")), *args],
        input=manifest.encode() if manifest is not None else b"",
        capture_output=True,
        cwd=cwd,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def run_pyops_mkfs(
    args: list[str], manifest: str | None, cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> bytes:
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(cli, ["mkfs", *args], input=manifest or "")
    assert result.exit_code == 0, result.output
    return result.stdout_bytes


def nanos_dump(*args: str) -> bytes:
    run = subprocess.run([str(tool("dump")), *args], capture_output=True, check=True)
    # dump prints its "detected filesystem" line with stdio, the rest without: into a pipe,
    # the line comes last. Put it first, where a terminal shows it.
    out = run.stdout
    detected = re.search(rb"detected filesystem at 0x[0-9a-f]+\n", out)
    if detected:
        out = detected.group() + out.replace(detected.group(), b"", 1)
    return out


def pyops_dump(*args: str) -> bytes:
    result = CliRunner().invoke(cli, ["dump", *args])
    assert result.exit_code == 0, result.output
    return result.stdout_bytes


def masked(text: bytes) -> bytes:
    """Output with the UUIDs and the places of file data (which follow the entry order,
    Nanos's being hash-table order) taken out."""
    text = UUID_LINE.sub(b"UUID: -", text)
    return re.sub(rb"offset:\d+", b"offset:-", text)


def test_nanos_test_manifests_make_the_same_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every manifest of Nanos's test/runtime, fed as Nanos's Makefile feeds it, its host
    files standing in under -r: the same output, the same layout, files and metadata."""
    folder = release()
    tool("mkfs")
    tool("dump")
    for name, raw in nanos_manifests().items():
        text = as_the_makefile_feeds_it(raw)
        work = tmp_path / Path(name).stem
        target = work / "target"
        target.mkdir(parents=True)
        fake_host_files(parse_manifest(text), target)
        args = ["-r", str(target), "-b", str(folder / "boot.img"), "-k", str(folder / "kernel.img")]
        args += ["-t", "(debug_exit:t)"]
        theirs = run_nanos_mkfs([*args, str(work / "c.img")], text, work)
        ours = run_pyops_mkfs([*args, str(work / "p.img")], text, work, monkeypatch)
        assert UUID_LINE.sub(b"-", ours) == UUID_LINE.sub(b"-", theirs), name
        c, p = work / "c.img", work / "p.img"
        assert c.stat().st_size == p.stat().st_size, name
        with open(c, "rb") as fc, open(p, "rb") as fp:
            assert fc.read(512) == fp.read(512), name  # boot.img's sector 0, the partitions
        cd, pd = open_image(c), open_image(p)
        assert pd.manifest == cd.manifest, name
        if "children" in cd.root.root:  # dummy.manifest's has none (pyops reads no tree)
            assert image_listing(pd.tree()) == image_listing(cd.tree()), name
        cb, pb = cd.boot_tree(), pd.boot_tree()
        assert cb is not None and pb is not None
        assert image_listing(pb) == image_listing(cb), name
        assert masked(nanos_dump(str(p))) == masked(nanos_dump(str(c))), name
        for image in (c, p):
            assert pyops_dump(str(image)) == nanos_dump(str(image)), name


def test_images_made_with_sizes_labels_and_no_boot_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "hello").write_bytes(b"hi\n")
    text = "(children:(hello:(contents:(host:hello))) program:/hello)"
    cases = [
        ["-l", "label"],
        ["-s", "10M"],
        ["-s", "1000"],
        ["-s", "0x100000"],
        ["-e"],
        ["-e", "-s", "3m", "-l", "empty"],
        ["-t", "(imagesize:5M)"],
        ["-t", "(coredumplimit:7M trace:t)", "-t", "(trace:(a:b))"],
    ]
    for args in cases:
        manifest = None if "-e" in args else text
        theirs = run_nanos_mkfs([*args, "c.img"], manifest, tmp_path)
        ours = run_pyops_mkfs([*args, "p.img"], manifest, tmp_path, monkeypatch)
        assert UUID_LINE.sub(b"-", ours) == UUID_LINE.sub(b"-", theirs), args
        c, p = tmp_path / "c.img", tmp_path / "p.img"
        assert c.stat().st_size == p.stat().st_size, args
        assert masked(nanos_dump(str(p))) == masked(nanos_dump(str(c))), args
        assert pyops_dump(str(p)) == nanos_dump(str(p)), args


def sector0_junk(image: bytes, volume_at: int) -> slice:
    """The bytes of a volume's sector 0 after its END_OF_LOG, which Nanos's mkfs can leave
    uninitialised (nanos-image-format.md section 5.7)."""
    label_end = image.index(b"\0", volume_at + 24)
    return slice(label_end + 1 + 5, volume_at + 512)  # 05 01 88 00 01 (link, END_OF_LOG)


def uuid_of(image: bytes, volume_at: int) -> slice:
    return slice(volume_at + 8, volume_at + 24)


def without(data: bytes, *cuts: slice) -> bytes:
    out = bytearray(data)
    for cut in cuts:
        out[cut] = bytes(cut.stop - cut.start)
    return bytes(out)


def test_an_empty_volume_is_byte_for_byte_mkfs_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_nanos_mkfs(["-e", "-l", "vol", "c.img"], None, tmp_path)
    run_pyops_mkfs(["-e", "-l", "vol", "p.img"], None, tmp_path, monkeypatch)
    c, p = (tmp_path / "c.img").read_bytes(), (tmp_path / "p.img").read_bytes()
    assert without(p, uuid_of(p, 0), sector0_junk(p, 0)) == without(
        c, uuid_of(c, 0), sector0_junk(c, 0)
    )


def in_order_of(manifest: Any, decoded: Any) -> Any:
    """``manifest`` with its tuples' entries in the order a decoded volume has them."""
    if not isinstance(manifest, dict) or not isinstance(decoded, dict):
        return manifest
    keys = [k for k in decoded if k in manifest] + [k for k in manifest if k not in decoded]
    return {k: in_order_of(manifest[k], decoded.get(k)) for k in keys}


def extent_orders(value: Any) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("extents"), dict):
                out.update(tuple(e) for e in item["extents"].values() if isinstance(e, dict))
            stack.extend(item.values())
    return out


def mkfs_in_our_extent_order(args: list[str], text: str, cwd: Path) -> None:
    """Run Nanos's mkfs until its hash-table order happens to put each extent's entries in
    the order pyops writes them (about one run in three does)."""
    for _ in range(60):
        run_nanos_mkfs(args, text, cwd)
        image = open_image(cwd / args[-1])
        volumes = [image.root] + ([image.boot] if image.boot is not None else [])
        if all(extent_orders(v.root) <= {("offset", "length", "allocated")} for v in volumes):
            return
    pytest.fail("Nanos's mkfs never wrote extents in pyops's order")


def test_a_volume_in_mkfs_s_entry_order_is_byte_for_byte_mkfs_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Nanos's entry order (and its UUID), pyops writes the very bytes of Nanos's mkfs:
    the snapshot, the file records, the framing, the data placement and the size."""
    (tmp_path / "a").write_bytes(b"hello\n")
    (tmp_path / "b").write_bytes(hashlib.sha256(b"b").digest() * 200)
    (tmp_path / "e").write_bytes(b"")
    text = (
        "(children:(a:(contents:(host:a) readonly:t) d:(children:(b:(contents:(host:b))"
        " e:(contents:(host:e)) l:(linktarget:../a) m:(children:()))))"
        ' program:/a arguments:[a "b c"] environment:(X:1 Y:2) mounts:(v:/mnt))'
    )
    mkfs_in_our_extent_order(["-l", "lab", "c.img"], text, tmp_path)
    with open(tmp_path / "c.img", "rb") as f:
        reference = read_volume(f)
    ordered = to_text(in_order_of(parse_manifest(text), reference.root))
    monkeypatch.chdir(tmp_path)

    mkfs(
        tmp_path / "p.img", ordered, MkfsOptions(label="lab"), sort=False, uuid=reference.info.uuid
    )
    c, p = (tmp_path / "c.img").read_bytes(), (tmp_path / "p.img").read_bytes()
    assert without(p, sector0_junk(p, 0)) == without(c, sector0_junk(c, 0))


def test_a_bootable_disk_in_mkfs_s_entry_order_is_byte_for_byte_mkfs_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = release()
    (tmp_path / "a").write_bytes(b"hello\n")
    text = "(children:(a:(contents:(host:a))) program:/a)"
    args = ["-b", str(folder / "boot.img"), "-k", str(folder / "kernel.img"), "c.img"]
    mkfs_in_our_extent_order(args, text, tmp_path)
    with open(tmp_path / "c.img", "rb") as f:
        c = f.read()
    disk = open_image(tmp_path / "c.img")
    ordered = to_text(in_order_of(parse_manifest(text), disk.root.root))
    monkeypatch.chdir(tmp_path)

    options = MkfsOptions(boot_image=str(folder / "boot.img"), kernel=str(folder / "kernel.img"))
    mkfs(tmp_path / "p.img", ordered, options, sort=False, uuid=disk.root.info.uuid)
    p = (tmp_path / "p.img").read_bytes()
    boot_at = (folder / "boot.img").stat().st_size + KLOG_SIZE
    root_at = disk.root.offset
    cuts = (uuid_of(c, boot_at), sector0_junk(c, boot_at), sector0_junk(c, root_at))
    assert without(p, *cuts) == without(c, *cuts)


# --- dump ---------------------------------------------------------------------------------


def odd_volume(tmp_path: Path) -> Path:
    """A volume of pyops's, with what Nanos's mkfs cannot write: hard links, names to quote."""
    from pyops.nanos.disk import write_raw_volume

    tree = Tree()
    tree.add_file("/bin/prog", b"program\n")
    tree.add_hardlink("/bin/again", "/bin/prog")
    tree.add_file("/etc/with space ü", b"spaced\n")
    tree.add_file("/etc/empty", b"")
    tree.add_symlink("/etc/abs", "/bin/prog")
    tree.add_directory("/var/empty")
    path = tmp_path / "odd.img"
    write_raw_volume(path, tree, label="odd")
    return path


def test_dump_prints_what_nanos_dump_prints(tmp_path: Path) -> None:
    image = odd_volume(tmp_path)
    assert pyops_dump(str(image)) == nanos_dump(str(image))
    assert b"prog:<visited>" in pyops_dump(str(image))  # the second name of the file


def tree_on_a_terminal(*args: str) -> bytes:
    """What Nanos's dump -t shows on a terminal (into a pipe it mixes its lines up)."""
    leader, follower = pty.openpty()
    try:
        run = subprocess.run([str(tool("dump")), *args], stdout=follower, check=True)
        assert run.returncode == 0
        os.close(follower)
        follower = -1
        out = bytearray()
        while True:
            try:
                piece = os.read(leader, 65536)
            except OSError:
                break
            if not piece:
                break
            out += piece
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    return bytes(out).replace(b"\r\n", b"\n")


def as_tree(lines: list[bytes]) -> Any:
    """dump -t's lines as a nested structure with each folder's entries sorted (Nanos lists
    them in hash-table order)."""
    root: list[Any] = []
    stack: list[tuple[int, list[Any]]] = [(-1, root)]
    for line in lines:
        depth = 0
        while line.startswith(b"|   "):
            line, depth = line[4:], depth + 1
        while stack[-1][0] >= depth:
            stack.pop()
        children: list[Any] = []
        stack[-1][1].append((line, children))
        stack.append((depth, children))

    def canonical(entries: list[Any]) -> Any:
        return sorted((name, canonical(inner)) for name, inner in entries)

    return canonical(root)


def test_dump_t_shows_the_tree_nanos_dump_shows(tmp_path: Path) -> None:
    tool("dump")
    for image in (odd_volume(tmp_path),):
        ours = pyops_dump("-t", str(image)).split(b"\n")
        theirs = tree_on_a_terminal("-t", str(image)).split(b"\n")
        assert ours[:2] == theirs[:2]  # Label, UUID
        assert as_tree(ours[2:-1]) == as_tree(theirs[2:-1])


def test_dump_d_copies_what_nanos_dump_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = release()
    (tmp_path / "f").write_bytes(b"file\n")
    (tmp_path / "e").write_bytes(b"")
    text = (
        "(children:(f:(contents:(host:f)) d:(children:(e:(contents:(host:e)) l:(linktarget:/f)"
        " x:() m:(children:())))) program:/f)"
    )
    args = ["-b", str(folder / "boot.img"), "-k", str(folder / "kernel.img")]
    run_pyops_mkfs([*args, "disk.img"], text, tmp_path, monkeypatch)
    for image in (tmp_path / "disk.img", odd_volume(tmp_path)):
        shutil.rmtree(tmp_path / "ours", ignore_errors=True)
        shutil.rmtree(tmp_path / "theirs", ignore_errors=True)
        assert pyops_dump("-d", str(tmp_path / "ours"), str(image)) == nanos_dump(
            "-d", str(tmp_path / "theirs"), str(image)
        )
        assert host_listing(tmp_path / "ours") == host_listing(tmp_path / "theirs")
        assert len(host_listing(tmp_path / "ours")) > 3


def test_dump_l_reads_the_crash_log_as_nanos_dump_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import struct

    folder = release()
    (tmp_path / "f").write_bytes(b"file\n")
    args = ["-b", str(folder / "boot.img"), "-k", str(folder / "kernel.img"), "disk.img"]
    run_pyops_mkfs(args, "(children:(f:(contents:(host:f))))", tmp_path, monkeypatch)
    image = tmp_path / "disk.img"
    with open(image, "r+b") as f:
        f.seek(0)
        first = struct.unpack_from("<I", f.read(512), 0x1BE + 8)[0] * 512
        f.seek(first - KLOG_SIZE)
        f.write(b"KLOG" + struct.pack("<Qi", 0x1234ABCD, 3) + b"[1.5] it went wrong\n\0rest")
    assert pyops_dump("-l", str(image)) == nanos_dump("-l", str(image))


def test_uefi_disks_have_mkfs_s_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = release()
    loader = folder / "bootx64.efi"
    if not loader.is_file():
        pytest.skip(f"{folder} has no bootx64.efi")
    (tmp_path / "f").write_bytes(b"file\n")
    text = "(children:(f:(contents:(host:f))))"
    args = ["-b", str(folder / "boot.img"), "-u", str(loader), "-k", str(folder / "kernel.img")]
    run_nanos_mkfs([*args, "c.img"], text, tmp_path)
    run_pyops_mkfs([*args, "p.img"], text, tmp_path, monkeypatch)
    c, p = (tmp_path / "c.img").read_bytes(), (tmp_path / "p.img").read_bytes()
    assert len(c) == len(p) and c[:512] == p[:512]  # boot.img, ESP, boot FS, root FS entries
    at = (folder / "boot.img").stat().st_size + KLOG_SIZE

    def region(data: bytes, start: int, length: int) -> bytes:
        return data[at + start : at + start + length]

    size = loader.stat().st_size
    assert region(p, 0, 0x5A) == region(c, 0, 0x5A)  # the parameter block
    for cluster in (2, 3, 4):  # the root, EFI and EFI/Boot folders
        start = 0x85800 + (cluster - 2) * 512
        assert region(p, start, 512) == region(c, start, 512), cluster
    assert region(p, 0x85E00, size) == region(c, 0x85E00, size) == loader.read_bytes()
    assert open_image(tmp_path / "p.img").manifest == open_image(tmp_path / "c.img").manifest
    assert masked(nanos_dump(str(tmp_path / "p.img"))) == masked(
        nanos_dump(str(tmp_path / "c.img"))
    )


# --- booting ------------------------------------------------------------------------------


@pytest.mark.boot
def test_a_disk_of_pyops_mkfs_boots(
    tmp_path: Path, nanos_release: Path, cc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyops.vm.qemu import VmConfig, run_vm

    hello = compile_c(cc, fixture_source("hello.c"), tmp_path / "hello", "-static")
    text = (
        f"(children:(hello:(contents:(host:{hello})) etc:(children:()))"
        " program:/hello arguments:[hello 7 word] environment:(FOO:bar))"
    )
    args = ["-b", str(nanos_release / "boot.img"), "-k", str(nanos_release / "kernel.img")]
    run_pyops_mkfs([*args, "-t", "(debug_exit:t)", "disk.img"], text, tmp_path, monkeypatch)
    log = tmp_path / "console"
    with open(log, "wb") as out:
        code = run_vm(
            tmp_path / "disk.img", VmConfig(memory="256M"), stdout=out.fileno(), timeout=240
        )
    console = log.read_text(errors="replace")
    assert code == 7, console[-2000:]
    assert "arg 2: word" in console and "env FOO=bar" in console


@pytest.mark.boot
def test_a_uefi_disk_of_pyops_mkfs_boots_under_ovmf(
    tmp_path: Path, nanos_release: Path, cc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    code_fd = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
    vars_fd = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
    loader = nanos_release / "bootx64.efi"
    if not (code_fd.is_file() and vars_fd.is_file() and loader.is_file()):
        pytest.skip("needs OVMF (Debian: ovmf) and the release's bootx64.efi")
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    hello = compile_c(cc, fixture_source("hello.c"), tmp_path / "hello", "-static")
    text = f"(children:(hello:(contents:(host:{hello}))) program:/hello arguments:[hello 5])"
    args = ["-b", str(nanos_release / "boot.img"), "-u", str(loader)]
    args += ["-k", str(nanos_release / "kernel.img"), "-t", "(debug_exit:t)", "disk.img"]
    run_pyops_mkfs(args, text, tmp_path, monkeypatch)
    shutil.copy(vars_fd, tmp_path / "vars.fd")
    run = subprocess.run(
        [
            qemu,
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "512M",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-drive",
            f"if=pflash,format=raw,readonly=on,file={code_fd}",
            "-drive",
            f"if=pflash,format=raw,file={tmp_path / 'vars.fd'}",
            "-drive",
            f"if=none,id=hd0,format=raw,file={tmp_path / 'disk.img'}",
            "-device",
            "virtio-scsi-pci,id=scsi0",
            "-device",
            "scsi-hd,bus=scsi0.0,drive=hd0",
            "-device",
            "isa-debug-exit",
        ],  # fmt: skip
        capture_output=True,
        timeout=300,
    )
    console = run.stdout.decode(errors="replace")
    assert "arg 1: 5" in console, console[-3000:]
    assert run.returncode == (5 << 1) | 1, console[-2000:]  # isa-debug-exit: (code << 1) | 1
