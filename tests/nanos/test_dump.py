"""``pyops dump``: Nanos dump's output (print_value, the tree, the klog) and its copy.

The comparisons with Nanos's own dump are in test_mkfs_dump_interop.py.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pyops.cli import cli
from pyops.errors import ImageFormatError
from pyops.nanos import dump
from pyops.nanos.disk import KLOG_SIZE
from pyops.nanos.mkfs import MkfsOptions, mkfs
from pyops.nanos.tfs import FileEntry, write_volume
from pyops.nanos.tree import Contents

from ..conftest import make_boot_img, tiny_elf


def test_values_print_as_nanos_prints_them() -> None:
    shared = {"x": "1"}
    value: dict[str, Any] = {
        "b": ["one", "two", {"k": "v", "j": ["p", "q"]}],
        "a": "text with spaces",
        "ünï": {"z": None, "y": -3, "x": 7},
        "c": shared,
        "d": shared,
        "e": b"printable",
        "f": b"\x00\x01",
        "g": {},
        "h": [],
    }
    assert dump.format_value(value) == (
        "(a:text with spaces\n"
        " b:[one\n"
        "    two\n"
        "    (j:[p\n"
        "        q]\n"
        "     k:v)]\n"
        " c:(x:1)\n"
        " d:<visited>\n"
        " e:printable\n"
        " f:{binary, length 2}\n"
        " g:()\n"
        " h:[]\n"
        # the indent counts the name's bytes: "ünï:" is 6
        " ünï:(x:7\n"
        "        y:-3\n"
        "        z:<null>))"
    )
    assert dump.format_value(value, None).startswith("(a:text with spaces b:[one two (j:[p q]")
    assert dump.format_value("plain") == "plain"


def test_folders_get_a_parent_entry_as_the_kernel_gives_them() -> None:
    root: dict[str, Any] = {"children": {"d": {"children": {"f": {}}}, "f": {}}, "program": "/f"}
    parents = dump.folder_parents(root)
    assert parents == {id(root): root, id(root["children"]["d"]): root}
    assert dump.format_value(root, 0, parents) == (
        "(..:<visited>\n"
        " children:(d:(..:<visited>\n"
        "              children:(f:()))\n"
        "           f:())\n"
        " program:/f)"
    )


def volume_image(tmp_path: Path, root: dict[str, Any], label: str = "") -> Path:
    path = tmp_path / "v.img"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        info = write_volume(fd, 0, root, label=label, uuid=bytes(range(16)))
        os.ftruncate(fd, info.size)
    finally:
        os.close(fd)
    return path


def sample(tmp_path: Path) -> Path:
    return volume_image(
        tmp_path,
        {
            "children": {
                "b": {
                    "children": {"f": FileEntry(Contents(b"data\n")), "l": {"linktarget": "../a"}}
                },
                "a": FileEntry(Contents(b"")),
                "x": {"readonly": "t"},
            },
            "program": "/a",
        },
        label="lab",
    )


def test_the_metadata_of_a_volume(tmp_path: Path) -> None:
    found, volume = dump.open_root(sample(tmp_path))
    assert found == dump.Found(0, False)
    assert dump.metadata(volume) == (
        "Label: lab\n"
        "UUID: 00010203-0405-0607-0809-0a0b0c0d0e0f\n"
        "metadata\n"
        "(..:<visited>\n"
        " children:(a:(extents:()\n"
        "              filelength:0)\n"
        "           b:(..:<visited>\n"
        "              children:(f:(extents:(0:(allocated:1\n"
        "                                       length:1\n"
        "                                       offset:3073))\n"
        "                           filelength:5)\n"
        "                        l:(linktarget:../a)))\n"
        "           x:(readonly:t))\n"
        " program:/a)\n"
    )


def test_the_tree(tmp_path: Path) -> None:
    _found, volume = dump.open_root(sample(tmp_path))
    assert "".join(dump.tree_lines(volume)) == (
        "\x1b[94m/\x1b[0m\n"
        "|   \x1b[97ma\x1b[0m\n"
        "|   \x1b[94mb\x1b[0m\n"
        "|   |   \x1b[97mf\x1b[0m\n"
        "|   |   \x1b[96ml\x1b[0m -> ../a\n"
        "|   \x1b[97mx\x1b[0m\n"
    )


def test_the_copy_leaves_out_links_and_entries_without_data(tmp_path: Path) -> None:
    image = sample(tmp_path)
    _found, volume = dump.open_root(image)
    out = tmp_path / "out"
    result = dump.extract(volume, image, out)  # the folder is made
    assert result.ok
    listing = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert listing == ["a", "b", "b/f"]
    assert (out / "b" / "f").read_bytes() == b"data\n" and (out / "a").read_bytes() == b""
    (out / "b" / "f").write_bytes(b"much longer than before\n")
    assert dump.extract(volume, image, out).ok  # a second copy replaces the files
    assert (out / "b" / "f").read_bytes() == b"data\n"


@pytest.mark.parametrize("name", ["a/b", "..", ""])
def test_names_that_would_leave_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    image = volume_image(
        tmp_path, {"children": {"d": {"children": {name: FileEntry(Contents(b"x"))}}}}
    )
    _found, volume = dump.open_root(image)
    if name == "..":  # dump skips "." and ".." as the kernel's own entries
        assert dump.extract(volume, image, tmp_path / "out").ok
        assert os.listdir(tmp_path / "out" / "d") == []
        return
    with pytest.raises(ImageFormatError, match="cannot be copied to a host folder"):
        dump.extract(volume, image, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def disk(tmp_path: Path) -> Path:
    make_boot_img(tmp_path / "boot.img")
    (tmp_path / "kernel.img").write_bytes(tiny_elf(body=b"k" * 1000))
    (tmp_path / "f").write_bytes(b"file\n")
    options = MkfsOptions(
        boot_image=str(tmp_path / "boot.img"), kernel=str(tmp_path / "kernel.img")
    )
    mkfs(tmp_path / "d.img", f"(children:(f:(contents:(host:{tmp_path / 'f'}))))", options)
    return tmp_path / "d.img"


def test_a_disk_is_read_at_its_root_partition(tmp_path: Path) -> None:
    image = disk(tmp_path)
    found, volume = dump.open_root(image)
    boot_at = (tmp_path / "boot.img").stat().st_size + KLOG_SIZE
    assert found == dump.Found(boot_at + 12 * 1024 * 1024, True)
    assert set(volume.root["children"]) == {"f"}
    result = CliRunner().invoke(cli, ["dump", str(image)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"detected filesystem at {found.offset:#x}\nLabel: \nUUID: ")


def write_klog(image: Path, boot_id: int, code: int, text: bytes) -> int:
    partition = dump.first_partition(image)
    with open(image, "r+b") as f:
        f.seek(partition - KLOG_SIZE)
        f.write(b"KLOG" + struct.pack("<Qi", boot_id, code) + text + b"\0more")
    return partition


def test_the_crash_log(tmp_path: Path) -> None:
    image = disk(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["dump", "-l", str(image)])
    assert result.exit_code == 0 and "no crash log found on image" in result.stderr
    partition = write_klog(image, 0xABCDEF, -2, b"[0.1] boom\n")
    log = dump.read_klog(image, partition)
    assert log == dump.Klog(
        partition, partition - KLOG_SIZE, KLOG_SIZE, 0xABCDEF, -2, b"[0.1] boom\n"
    )
    result = runner.invoke(cli, ["dump", "-l", str(image)])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"detected filesystem at {partition:#x}\n"
        f"klog offset: {partition - KLOG_SIZE:#x}\n"
        "klog size: 4096 bytes\n"
        "boot id: abcdef\n"
        "exit code: -2\n"
        "\n"
        "[0.1] boom\n"
        "\n"
    )


def test_the_crash_log_of_a_volume_without_partitions(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["dump", "-l", str(sample(tmp_path))])
    assert result.exit_code == 1 and "no boot filesystem found" in result.stderr


def test_the_command(tmp_path: Path) -> None:
    image = sample(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["dump", "-t", "-d", str(tmp_path / "out"), str(image)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        "Label: lab\nUUID: 00010203-0405-0607-0809-0a0b0c0d0e0f\n\x1b[94m/"
    )
    assert (tmp_path / "out" / "b" / "f").read_bytes() == b"data\n"
    plain = runner.invoke(cli, ["dump", str(image)])
    assert plain.exit_code == 0 and "\nmetadata\n(..:<visited>\n" in plain.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "smaller than one sector"),
        (b"\0" * 4096, "not a TFS volume"),
    ],
)
def test_the_command_says_what_is_wrong_in_one_line(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    image = tmp_path / "x.img"
    if content is not None:
        image.write_bytes(content)
    result = CliRunner().invoke(cli, ["dump", str(image)])
    assert result.exit_code == 1 and message in result.stderr.splitlines()[0]
    assert "Traceback" not in result.output


def test_on_a_terminal_what_the_image_holds_cannot_drive_it(tmp_path: Path) -> None:
    image = volume_image(
        tmp_path,
        {"children": {"clear\x1b[2J": {"linktarget": "x\nerror: forged"}}, "v": "\r\x07"},
        label="\x1b]0;",
    )
    _found, volume = dump.open_root(image)
    shown = dump.metadata(volume, escape=True) + "".join(dump.tree_lines(volume, escape=True))
    assert "\x1b[2J" not in shown and "\\x1b[2J" in shown and "\\x1b]0;" in shown
    assert "x\\nerror: forged" in shown and "v:\\r\\x07" in shown
    assert dump.printable("caf\u00e9 \udcff") == "caf\u00e9 \\xff"
    # into a pipe, as Nanos's dump prints them
    assert "clear\x1b[2J" in dump.metadata(volume)
    log = dump.Klog(0, 0, 0, 1, 0, b"line\x1b[31m one\n\tline two")
    assert log.report(escape=True).endswith(b"line\\x1b[31m one\n    line two\n")
