"""One name for each architecture, whatever the tool that spelled it."""

from __future__ import annotations

import pytest

from pyops import arch
from pyops.arch import Arch
from pyops.errors import InvalidInput


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("amd64", Arch.AMD64),
        ("x86_64", Arch.AMD64),
        ("X86-64", Arch.AMD64),
        ("EM_X86_64", Arch.AMD64),
        ("arm64", Arch.ARM64),
        ("aarch64", Arch.ARM64),
        ("EM_AARCH64", Arch.ARM64),
        ("i686", Arch.I386),
    ],
)
def test_every_spelling_finds_one_arch(spelling: str, expected: Arch) -> None:
    assert arch.parse(spelling) is expected


def test_each_tool_gets_its_own_spelling() -> None:
    assert (Arch.AMD64.uname, Arch.AMD64.elf_machine, Arch.AMD64.qemu_binary) == (
        "x86_64",
        "EM_X86_64",
        "qemu-system-x86_64",
    )
    assert (Arch.ARM64.uname, Arch.ARM64.elf_machine, Arch.ARM64.qemu_binary) == (
        "aarch64",
        "EM_AARCH64",
        "qemu-system-aarch64",
    )
    assert arch.of_elf_machine("EM_AARCH64") is Arch.ARM64
    assert arch.of_elf_machine("EM_68K") is None
    assert [a for a in Arch if a.nanos] == [Arch.AMD64, Arch.ARM64]


def test_an_unknown_name_says_which_are_known() -> None:
    with pytest.raises(InvalidInput, match="unknown architecture 'vax'") as caught:
        arch.parse("vax")
    assert caught.value.hint is not None and "amd64 (x86_64) or arm64" in caught.value.hint
    assert arch.find("vax") is None
