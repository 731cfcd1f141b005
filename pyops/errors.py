"""The one exception family of pyops: the text of each error is what the user reads."""

from __future__ import annotations


class PyopsError(Exception):
    """Base of every error pyops raises on purpose.

    ``str(error)`` is a complete sentence for the user; ``hint`` says how to fix it.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InvalidInput(PyopsError):
    """A value given by the user (a name, a size, a label, an option) is not acceptable."""


class InvalidReference(InvalidInput):
    """An image reference or a digest does not follow the Docker/OCI grammar."""


class HostFileError(PyopsError):
    """A file on the host that pyops must read is missing or unreadable."""


class ImageFormatError(PyopsError):
    """A disk image or TFS volume is corrupt or not one at all."""


class FilesystemFull(PyopsError):
    """The content does not fit in the size asked for."""

    needed: int = 0  # bytes the content needs, when known


class ReleaseError(PyopsError):
    """A Nanos release (kernel, boot.img, klibs) is missing, incomplete or not valid."""


class NotAnElf(PyopsError):
    """A file that must be an ELF program or library is not one, or is truncated."""


class ElfMismatch(PyopsError):
    """An ELF file is of another class or machine than the one asked for."""


class LibraryNotFound(PyopsError):
    """A library needed by a program was not found in any searched directory."""

    def __init__(
        self,
        message: str,
        *,
        library: str = "",
        needed_by: str = "",
        searched: tuple[str, ...] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.library = library
        self.needed_by = needed_by
        self.searched = searched


class ConfigError(PyopsError):
    """A config.json or a command-line setting is invalid."""


class VolumeError(PyopsError):
    """A volume of the volume store is missing, taken, ambiguous or cannot be mounted."""


class QemuError(PyopsError):
    """qemu is missing, or cannot start the virtual machine as asked."""


class NetworkError(PyopsError):
    """A network request failed (connection, timeout, TLS)."""


class RegistryError(PyopsError):
    """A registry answered with an error."""


class AuthError(RegistryError):
    """A registry refused the credentials, or needs some that were not given."""


class ManifestNotFound(RegistryError):
    """The image or tag does not exist in the registry."""


class PlatformNotFound(RegistryError):
    """The image has no manifest for the platform asked for."""


class DigestMismatch(PyopsError):
    """Downloaded content does not match its digest."""


class UnsafeLayerPath(PyopsError):
    """A layer member would write outside the image root."""


class LayerError(PyopsError):
    """A layer archive is truncated, corrupt or in a format pyops cannot read."""


class PackageError(PyopsError):
    """A package is missing, incomplete or invalid."""


class CaseCollision(PackageError):
    """A package would keep a path of the image that the host folder it was unpacked in
    cannot hold: the image has two names there that differ only in case or Unicode
    normalisation, which that folder's filesystem takes for one (macOS's APFS)."""


class DiskFull(PyopsError):
    """The disk (or quota) holding a file pyops writes has no room left."""


class LimitExceeded(PyopsError):
    """Untrusted input is larger, deeper or slower than a limit allows; the text names the
    limit and how to raise it."""


class Cancelled(PyopsError):
    """A download stopped because the user cancelled it (Ctrl-C)."""
