"""One vocabulary for machine architectures.

Each tool names them its own way: OCI and Go say ``amd64`` and ``arm64``, ``uname -m`` says
``x86_64`` and ``aarch64``, ELF headers say ``EM_X86_64`` and ``EM_AARCH64``, qemu has
``qemu-system-x86_64`` and ``qemu-system-aarch64``. :class:`Arch` is the one name pyops
uses inside; every spelling from outside goes through :func:`parse`, and every spelling for
outside comes from an :class:`Arch`'s properties.
"""

from __future__ import annotations

import enum

from pyops.errors import InvalidInput


class Arch(enum.StrEnum):
    """An architecture, by its OCI name."""

    AMD64 = "amd64"
    ARM64 = "arm64"
    I386 = "386"
    ARM = "arm"
    RISCV64 = "riscv64"
    PPC64LE = "ppc64le"
    S390X = "s390x"

    @property
    def elf_machine(self) -> str:
        """The ELF ``e_machine`` name (``EM_X86_64``)."""
        return _ELF[self]

    @property
    def uname(self) -> str:
        """What ``uname -m`` prints on it (``x86_64``)."""
        return _UNAME[self]

    @property
    def nanos(self) -> bool:
        """Whether Nanos runs on it (x86-64 and arm64)."""
        return self in (Arch.AMD64, Arch.ARM64)

    @property
    def qemu_binary(self) -> str:
        """The qemu system emulator for guests of this architecture."""
        return f"qemu-system-{_QEMU.get(self, self.uname)}"


_ELF = {
    Arch.AMD64: "EM_X86_64",
    Arch.ARM64: "EM_AARCH64",
    Arch.I386: "EM_386",
    Arch.ARM: "EM_ARM",
    Arch.RISCV64: "EM_RISCV",
    Arch.PPC64LE: "EM_PPC64",
    Arch.S390X: "EM_S390",
}
_UNAME = {
    Arch.AMD64: "x86_64",
    Arch.ARM64: "aarch64",
    Arch.I386: "i686",
    Arch.ARM: "armv7l",
    Arch.RISCV64: "riscv64",
    Arch.PPC64LE: "ppc64le",
    Arch.S390X: "s390x",
}
_QEMU = {Arch.I386: "i386", Arch.PPC64LE: "ppc64", Arch.ARM: "arm"}

# Every spelling pyops accepts, lower case.
_ALIASES: dict[str, Arch] = {
    **{arch.value: arch for arch in Arch},
    **{name.lower(): arch for arch, name in _ELF.items()},
    "x86_64": Arch.AMD64,
    "x86-64": Arch.AMD64,
    "x64": Arch.AMD64,
    "aarch64": Arch.ARM64,
    "armv8l": Arch.ARM64,
    "arm64/v8": Arch.ARM64,
    "i386": Arch.I386,
    "i586": Arch.I386,
    "i686": Arch.I386,
    "x86": Arch.I386,
    "armhf": Arch.ARM,
    "armv7l": Arch.ARM,
    "armv7": Arch.ARM,
    "ppc64": Arch.PPC64LE,
}


def find(text: str) -> Arch | None:
    """The architecture ``text`` names in any tool's spelling, or None."""
    return _ALIASES.get(text.strip().lower())


def parse(text: str) -> Arch:
    """The architecture ``text`` names; an :class:`InvalidInput` names the spellings known."""
    found = find(text)
    if found is None:
        raise InvalidInput(
            f"unknown architecture {text!r}",
            hint="use amd64 (x86_64) or arm64 (aarch64); also known: "
            + ", ".join(a.value for a in Arch if not a.nanos),
        )
    return found


def host() -> Arch | None:
    """This machine's architecture, or None for one pyops does not name."""
    import platform

    return find(platform.machine())


def of_elf_machine(machine: str) -> Arch | None:
    """The architecture of an ELF ``e_machine`` name, or None for one pyops does not name."""
    for arch, name in _ELF.items():
        if name == machine:
            return arch
    return None
