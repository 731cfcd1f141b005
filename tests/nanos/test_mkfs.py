"""``pyops mkfs``: Nanos mkfs's steps, flags and sizes, with pyops's writer and reader.

The comparisons with Nanos's own mkfs are in test_mkfs_dump_interop.py.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pyops.cli import cli
from pyops.errors import FilesystemFull, HostFileError, InvalidInput, ReleaseError
from pyops.nanos.disk import BOOTFS_SIZE, KLOG_SIZE, open_image, read_partitions
from pyops.nanos.mkfs import (
    MkfsOptions,
    host_source,
    mkfs,
    parse_size,
    prepare,
    read_boot_image,
    translate,
)
from pyops.nanos.tfs import FileEntry, read_file_bytes
from pyops.nanos.tree import Contents, Directory, File, HostFile, ImageData, Symlink

from ..conftest import make_boot_img, tiny_elf

MiB = 1 << 20


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1000", 1000),
        ("64M", 64 * MiB),
        ("64m", 64 * MiB),
        ("2k", 2048),
        ("1G", 1 << 30),
        ("64MB", 64 * MiB),  # mkfs reads one character after the number
        ("0x10", 16),
        ("0x10k", 16 * 1024),
        ("010", 8),  # octal, as strtoll reads it
        (" 12", 12),
        ("+12", 12),
        ("0", None),
        ("-5", None),
        ("", None),
        ("M", None),
        ("12x", None),
        ("12 M", None),
        ("09", None),  # "0" then "9": not a suffix
        ("0x", None),
        ("99999999999999999999G", None),
    ],
)
def test_sizes_are_read_as_mkfs_reads_them(text: str, size: int | None) -> None:
    assert parse_size(text) == size


# --- the tuples ---------------------------------------------------------------------------


def test_t_tuples_replace_root_entries_in_order() -> None:
    prepared = prepare(
        "(children:() program:/a trace:(x:y))",
        MkfsOptions(tuples=("(trace:t debug_exit:t)", "(debug_exit:u)(more:1)")),
    )
    assert prepared.root == {
        "children": {},
        "program": "/a",
        "trace": "t",
        "debug_exit": "u",
        "more": "1",
    }


def test_imagesize_is_taken_out_and_overrides_s() -> None:
    prepared = prepare("(children:() imagesize:5M)", MkfsOptions(size=100))
    assert prepared.size == 5 * MiB and "imagesize" not in prepared.root
    prepared = prepare("(children:() coredumplimit:1G)", MkfsOptions(size=100))
    assert prepared.size == 1 << 30 and prepared.root["coredumplimit"] == "1G"
    assert prepare("(children:() coredumplimit:1k)", MkfsOptions(size=5000)).size == 5000
    with pytest.raises(InvalidInput, match='invalid imagesize "lots"'):
        prepare("(children:() imagesize:lots)", MkfsOptions())
    with pytest.raises(InvalidInput, match=r"invalid imagesize \(a tuple\)"):
        prepare("(children:() imagesize:(a:b))", MkfsOptions())
    with pytest.raises(InvalidInput, match="invalid coredumplimit"):
        prepare("(children:() coredumplimit:x)", MkfsOptions())


def test_the_boot_filesystem_from_k_keeps_the_manifests_klibs() -> None:
    text = "(boot:(children:(klib:(children:(ntp:(contents:(host:ntp)))))) children:())"
    prepared = prepare(text, MkfsOptions(boot_image="boot.img", kernel="k.img"))
    assert prepared.boot == {
        "children": {
            "klib": {"children": {"ntp": {"contents": {"host": "ntp"}}}},
            "kernel": {"contents": {"host": "k.img"}},
        }
    }
    assert "boot" not in prepared.root
    # an old manifest's /kernel is the boot filesystem's too, and stays in the root
    old = prepare(
        "(children:(kernel:(contents:(host:k)) a:(contents:(host:a))))",
        MkfsOptions(boot_image="boot.img"),
    )
    assert old.boot == {"children": {"kernel": {"contents": {"host": "k"}}}}
    assert set(old.root["children"]) == {"kernel", "a"}


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("(a:b)", MkfsOptions(), "the manifest's root tuple has no children tuple"),
        ("(children:x)", MkfsOptions(), "the manifest's children is not a tuple"),
        ("(children:() boot:x)", MkfsOptions(), "the manifest's boot is not a tuple"),
        ("(children:())", MkfsOptions(boot_image="b"), "kernel or boot FS not specified"),
        ("(children:())", MkfsOptions(kernel="k"), "needs -b BOOT_IMAGE"),
        ("(children:(kernel:(contents:(host:k))))", MkfsOptions(), "needs -b BOOT_IMAGE"),
        ("(children:())", MkfsOptions(uefi_loader="u"), "UEFI loader can only be supplied"),
        ("(children:())", MkfsOptions(empty=True, boot_image="b"), "cannot be combined with -b"),
        ("(children:())", MkfsOptions(empty=True, kernel="k"), "cannot be combined with -k"),
        ("(children:())", MkfsOptions(empty=True, tuples=("(a:b)",)), "-t has nothing"),
        ("(children:())", MkfsOptions(label="x" * 32), "Nanos allows at most 31"),
        ("(children:())", MkfsOptions(tuples=("(a:",)), "the -t tuple '(a:', line 1, column 1"),
        ("(children:() a:b", MkfsOptions(), "the manifest, line 1, column 1: the text ends"),
    ],
)
def test_what_mkfs_refuses(text: str, options: MkfsOptions, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        prepare(text, options)
    assert message in str(caught.value)


def test_a_root_without_children_is_written_with_a_kernel_as_mkfs_writes_it() -> None:
    prepared = prepare("(program:/dummy)", MkfsOptions(boot_image="b", kernel="k"))
    assert prepared.root == {"program": "/dummy"} and prepared.boot is not None
    assert "no children" in prepared.warnings[0]


def test_e_is_the_empty_filesystem_and_reads_no_manifest() -> None:
    prepared = prepare(None, MkfsOptions(empty=True, size=5))
    assert prepared.root == {"children": {}} and prepared.boot is None and prepared.size == 5
    with pytest.raises(InvalidInput, match="no manifest"):
        prepare(None, MkfsOptions())


def files(tmp_path: Path) -> Path:
    (tmp_path / "hello").write_bytes(b"hi\n")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "big").write_bytes(os.urandom(70_000))
    return tmp_path


def test_translate_makes_files_and_keeps_every_other_entry(tmp_path: Path) -> None:
    files(tmp_path)
    tup: dict[str, Any] = {
        "children": {
            "z": {"contents": {"host": str(tmp_path / "hello")}, "readonly": "t"},
            "a": {"children": {"l": {"linktarget": "../z"}}, "mtime": "1"},
            "v": {"contents": {"host": str(tmp_path / "empty")}},
        },
        "program": "/z",
        "arguments": ["z", {"contents": {"host": "left/as/it/is"}}],
    }
    out = translate(tup)
    assert list(out) == ["arguments", "children", "program"]  # byte order of names
    assert list(out["children"]) == ["a", "v", "z"]
    z = out["children"]["z"]
    assert isinstance(z, FileEntry) and dict(z) == {"readonly": "t"}
    assert isinstance(z.source, HostFile) and z.source.size == 3
    assert out["children"]["a"] == {"children": {"l": {"linktarget": "../z"}}, "mtime": "1"}
    assert out["arguments"][1] == {"contents": {"host": "left/as/it/is"}}  # vectors stay
    kept = translate(tup, sort=False)
    assert list(kept) == ["children", "program", "arguments"]


@pytest.mark.parametrize(
    ("children", "error", "message"),
    [
        ({"a/b": {}}, InvalidInput, "'a/b' cannot be a file name"),
        ({"..": {}}, InvalidInput, "'..' cannot be a file name"),
        ({"": {}}, InvalidInput, "'' cannot be a file name"),
        ({"a": "text"}, InvalidInput, '/a is "text", not a tuple'),
        ({"a": {"contents": "x"}}, InvalidInput, '/a: its contents are "x", not a tuple'),
        ({"a": {"contents": {"host": []}}}, InvalidInput, "its host is (a vector), not a path"),
        ({"a": {"contents": {"host": "/nonexistent"}}}, HostFileError, "/nonexistent (for /a)"),
        ({"d": {"children": {"f": {"contents": {"host": "/"}}}}}, HostFileError, "is a folder"),
    ],
)
def test_translate_refuses_what_mkfs_would_crash_on(
    children: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as caught:
        translate({"children": children})
    assert message in str(caught.value)


def test_entries_that_are_neither_files_folders_nor_links_are_warned_of() -> None:
    warnings: list[str] = []
    out = translate({"children": {"x": {}, "y": {"contents": {}}}}, warnings=warnings)
    assert out == {"children": {"x": {}, "y": {}}}
    assert any("/x is neither a file" in w for w in warnings)
    assert any("/y: its contents name no host file" in w for w in warnings)


def test_host_paths_are_looked_up_in_the_target_root_first(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "real").write_bytes(b"in the target root")
    (root / "lib" / "abs").symlink_to("/lib/real")  # absolute: in the target root again
    (root / "lib" / "rel").symlink_to("real")  # relative: followed on the host
    (root / "lib" / "gone").symlink_to("/lib/missing")  # not there: the host path itself
    (tmp_path / "hostonly").write_bytes(b"on the host")
    (root / "loop").symlink_to("/loop")
    target = str(root)

    def found(name: str) -> str:
        source = host_source(name, target)
        assert isinstance(source, HostFile)
        return Path(source.path).read_text()

    assert found("/lib/real") == "in the target root"
    assert found("lib/real") == "in the target root"
    assert found("/lib/abs") == "in the target root"
    assert found("/lib/rel") == "in the target root"
    assert found(str(tmp_path / "hostonly")) == "on the host"
    with pytest.raises(HostFileError, match="no such file"):
        host_source("/lib/gone", target)  # /lib/gone itself is not on the host either
    with pytest.raises(HostFileError, match="too many levels of symbolic links"):
        host_source("/loop", target)


def test_devices_are_stored_empty_as_mkfs_reads_them() -> None:
    assert host_source("/dev/null") == Contents(b"")


# --- images -------------------------------------------------------------------------------


def image_of(path: Path) -> Any:
    return open_image(path)


def test_a_volume_reads_back(tmp_path: Path) -> None:
    src = files(tmp_path)
    text = (
        f"(children:(hello:(contents:(host:{src / 'hello'}) readonly:t)"
        f" d:(children:(big:(contents:(host:{src / 'big'})) e:(contents:(host:{src / 'empty'}))"
        " l:(linktarget:../hello) m:(children:())))"
        ' ) program:/hello arguments:[hello "a b"] environment:(A:1) mounts:(v:/mnt))'
    )
    result = mkfs(tmp_path / "v.img", text, MkfsOptions(label="mine"))
    assert [w.name for w in result.filesystems] == ["root"]
    disk = image_of(tmp_path / "v.img")
    assert disk.root.info.label == "mine" and disk.partitions == ()
    assert disk.manifest.program == "/hello"
    assert disk.manifest.arguments == ("hello", "a b")
    assert disk.manifest.extra == {"mounts": {"v": "/mnt"}}
    tree = disk.tree()
    hello = tree.get("/hello")
    assert isinstance(hello, File) and hello.attributes == {"readonly": "t"}
    assert isinstance(hello.source, ImageData) and read_file_bytes(hello.source) == b"hi\n"
    big = tree.get("/d/big")
    assert isinstance(big, File) and isinstance(big.source, ImageData)
    assert read_file_bytes(big.source) == (src / "big").read_bytes()
    assert isinstance(tree.get("/d/l"), Symlink) and isinstance(tree.get("/d/m"), Directory)
    report = result.filesystems[0].report()
    assert report.startswith("UUID: ") and "\nmetadata\n(arguments:[hello\n" in report


@pytest.mark.parametrize(
    ("text", "options", "size"),
    [
        # nanos-image-format.md section 1.8, measured with Nanos's mkfs
        ("(children:(h:(contents:(host:HELLO))))", MkfsOptions(), 2_621_440),
        ("(children:(h:(contents:(host:HELLO))))", MkfsOptions(size=10 * MiB), 11_010_048),
        ("(children:(h:(contents:(host:HELLO))))", MkfsOptions(size=1000), 1_573_888),
        ("(children:() imagesize:5M)", MkfsOptions(), 5_767_168),
        (None, MkfsOptions(empty=True), 1_048_576),
        (None, MkfsOptions(empty=True, size=1000), 1_048_576),
    ],
)
def test_images_are_sized_as_mkfs_sizes_them(
    tmp_path: Path, text: str | None, options: MkfsOptions, size: int
) -> None:
    src = files(tmp_path)
    manifest = text.replace("HELLO", str(src / "hello")) if text else None
    result = mkfs(tmp_path / "x.img", manifest, options)
    assert result.size == size == (tmp_path / "x.img").stat().st_size


def test_a_bootable_disk_has_mkfs_layout(tmp_path: Path) -> None:
    src = files(tmp_path)
    boot = make_boot_img(tmp_path / "boot.img")
    (tmp_path / "kernel.img").write_bytes(tiny_elf(body=b"kernel" * 100))
    (tmp_path / "ntp").write_bytes(b"klib")
    text = (
        (
            "(boot:(children:(klib:(children:(ntp:(contents:(host:NTP)))))) "
            "children:(h:(contents:(host:HELLO))) program:/h)"
        )
        .replace("NTP", str(tmp_path / "ntp"))
        .replace("HELLO", str(src / "hello"))
    )
    options = MkfsOptions(
        boot_image=str(tmp_path / "boot.img"), kernel=str(tmp_path / "kernel.img"), size=30 * MiB
    )
    result = mkfs(tmp_path / "d.img", text, options)
    boot_at = len(boot) + KLOG_SIZE
    root_at = boot_at + BOOTFS_SIZE
    root_size = (30 * MiB - root_at + 2 * 512 * 1024 - 1) // (512 * 1024) * (512 * 1024)
    assert result.size == root_at + root_size == (tmp_path / "d.img").stat().st_size
    data = (tmp_path / "d.img").read_bytes()
    assert data[:0x1BE] == boot[:0x1BE]
    parts = read_partitions(data[:512])
    assert parts is not None
    assert [(p.type, p.lba_start, p.sectors) for p in parts] == [
        (0x83, boot_at // 512, BOOTFS_SIZE // 512),
        (0x83, root_at // 512, root_size // 512),
    ]
    disk = open_image(tmp_path / "d.img")
    boot_tree = disk.boot_tree()
    assert boot_tree is not None
    assert sorted(p for p, _ in boot_tree.walk()) == ["/", "/kernel", "/klib", "/klib/ntp"]
    assert disk.manifest.program == "/h" and "boot" not in disk.manifest.extra
    assert [w.name for w in result.filesystems] == ["boot", "root"]
    assert (
        result.filesystems[0]
        .report()
        .endswith("metadata\n(children:(kernel:()\n           klib:(children:(ntp:()))))\n")
    )


def test_a_kernel_too_large_for_the_boot_filesystem_is_refused(tmp_path: Path) -> None:
    make_boot_img(tmp_path / "boot.img")
    with open(tmp_path / "kernel.img", "wb") as f:
        f.truncate(BOOTFS_SIZE)
    options = MkfsOptions(
        boot_image=str(tmp_path / "boot.img"), kernel=str(tmp_path / "kernel.img")
    )
    with pytest.raises(FilesystemFull, match="the boot filesystem needs"):
        mkfs(tmp_path / "d.img", "(children:())", options)
    assert not (tmp_path / "d.img").exists()


def test_boot_images_are_checked_as_mkfs_needs_them(tmp_path: Path) -> None:
    stub = bytearray(512)
    struct.pack_into("<QI", stub, 0x1B2, 0, 12)
    stub[510:] = b"\x55\xaa"
    (tmp_path / "stub.img").write_bytes(stub)  # arm64's boot-stub.img: sector 0 alone
    assert read_boot_image(str(tmp_path / "stub.img")) == bytes(stub)
    (tmp_path / "short.img").write_bytes(bytes(stub) + b"x" * 512)
    with pytest.raises(ReleaseError, match="says 0 bytes follow sector 0, but the file holds 512"):
        read_boot_image(str(tmp_path / "short.img"))
    (tmp_path / "junk.img").write_bytes(b"junk" * 200)
    with pytest.raises(ReleaseError, match="no boot sector signature"):
        read_boot_image(str(tmp_path / "junk.img"))
    with pytest.raises(ReleaseError, match="no such file"):
        read_boot_image(str(tmp_path / "missing.img"))


def test_the_same_manifest_gives_the_same_metadata(tmp_path: Path) -> None:
    src = files(tmp_path)
    a = f"(children:(b:(contents:(host:{src / 'hello'})) a:(children:())) z:1 y:2)"
    b = f"(y:2 z:1 children:(a:(children:()) b:(contents:(host:{src / 'hello'}))))"
    uuid = bytes(range(16))
    mkfs(tmp_path / "a.img", a, uuid=uuid)
    mkfs(tmp_path / "b.img", b, uuid=uuid)
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()


def test_a_failed_mkfs_leaves_the_old_image(tmp_path: Path) -> None:
    (tmp_path / "x.img").write_bytes(b"old")
    with pytest.raises(HostFileError):
        mkfs(tmp_path / "x.img", "(children:(a:(contents:(host:/nonexistent))))")
    assert (tmp_path / "x.img").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.img"]


# --- the command --------------------------------------------------------------------------


def test_the_command_reads_the_manifest_on_stdin_and_prints_as_mkfs(tmp_path: Path) -> None:
    src = files(tmp_path)
    runner = CliRunner()
    text = f"(children:(h:(contents:(host:{src / 'hello'}))) program:/h)"
    result = runner.invoke(
        cli, ["mkfs", "-l", "L", "-t", "(debug_exit:t)", str(tmp_path / "x.img")], input=text
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("UUID: ") and lines[1:] == [
        "metadata",
        "(children:(h:())",
        " debug_exit:t",
        " program:/h)",
    ]
    assert open_image(tmp_path / "x.img").root.info.label == "L"
    result = runner.invoke(cli, ["mkfs", "-e", "-s", "2M", str(tmp_path / "e.img")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "e.img").stat().st_size == 2 * MiB + 512 * 1024


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["-s", "lots"], "", "error: invalid image file size lots"),
        ([], "(children:(a b))", "error: the manifest, line 1, column 14: expected ':'"),
        ([], "", "error: the manifest holds no tuple"),
        (["-b", "nope.img"], "(children:())", "error: kernel or boot FS not specified"),
        (["-u", "x.efi"], "(children:())", "error: UEFI loader can only be supplied"),
    ],
)
def test_the_command_says_what_is_wrong_in_one_line(
    tmp_path: Path, args: list[str], stdin: str, message: str
) -> None:
    result = CliRunner().invoke(cli, ["mkfs", *args, str(tmp_path / "x.img")], input=stdin)
    assert result.exit_code == 1
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.output and not (tmp_path / "x.img").exists()


def test_warnings_go_to_stderr(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["mkfs", str(tmp_path / "x.img")], input="(children:(x:()))")
    assert result.exit_code == 0
    assert "warning: /x is neither a file" in result.stderr
