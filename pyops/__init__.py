"""pyops: build and boot Nanos unikernel images from Linux programs and OCI images.

The public API, importable from ``pyops`` (loaded on first use, so ``import pyops`` stays
fast)::

    import pyops

    pkg = pyops.from_docker("node:20", "node")               # pull and package
    release = pyops.get_release()                             # a Nanos release
    built = pyops.build_package_image(pkg, pyops.BuildConfig(program=pkg.program,
                                      args=("hi.js",)), release, "node.img")
    code = pyops.run_vm(built.path, pyops.VmConfig(memory="1G"))

The wings (README, "Architecture"): :mod:`pyops.oci` (registries, images, layers),
:mod:`pyops.elf` (ELF files and a static ``ldd`` for any root), :mod:`pyops.nanos` (the image
format, releases), :mod:`pyops.vm` (qemu) and :mod:`pyops.ops` (config.json, packages, the
recipes behind the commands).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pyops.errors import (
    AuthError,
    Cancelled,
    CaseCollision,
    ConfigError,
    DigestMismatch,
    DiskFull,
    FilesystemFull,
    HostFileError,
    ImageFormatError,
    InvalidInput,
    LibraryNotFound,
    LimitExceeded,
    ManifestNotFound,
    NetworkError,
    NotAnElf,
    PackageError,
    PlatformNotFound,
    PyopsError,
    QemuError,
    RegistryError,
    ReleaseError,
    UnsafeLayerPath,
)
from pyops.version import __version__

# name -> module that defines it
_LAZY = {
    "ImageRef": "pyops.oci.reference",
    "Store": "pyops.oci.store",
    "pull": "pyops.oci.pull",
    "PulledImage": "pyops.oci.pull",
    "Package": "pyops.ops.package",
    "from_docker": "pyops.ops.package",
    "load_package": "pyops.ops.package",
    "list_packages": "pyops.ops.package",
    "remove_package": "pyops.ops.package",
    "BuildConfig": "pyops.ops.build",
    "BuiltImage": "pyops.ops.build",
    "build_image": "pyops.ops.build",
    "build_package_image": "pyops.ops.build",
    "NanosRelease": "pyops.nanos.release",
    "get_release": "pyops.nanos.release",
    "install_release_from": "pyops.nanos.release",
    "installed_releases": "pyops.nanos.release",
    "VmConfig": "pyops.vm.qemu",
    "Accel": "pyops.vm.qemu",
    "PortForward": "pyops.vm.qemu",
    "run_vm": "pyops.vm.qemu",
    "DiskImage": "pyops.nanos.disk",
    "open_image": "pyops.nanos.disk",
    "write_disk": "pyops.nanos.disk",
    "Tree": "pyops.nanos.tree",
    "Manifest": "pyops.nanos.manifest",
    "resolve": "pyops.elf.ldd",
    "Resolution": "pyops.elf.ldd",
    "list_images": "pyops.ops.images",
    "BuildFlags": "pyops.ops.recipes",
    "RunFlags": "pyops.ops.recipes",
    "build_program": "pyops.ops.recipes",
    "run_program": "pyops.ops.recipes",
    "run_package": "pyops.ops.recipes",
    "OpsConfig": "pyops.ops.config",
    "load_config": "pyops.ops.config",
    "remove_image": "pyops.ops.images",
    "Contents": "pyops.ops.contents",
    "package_contents": "pyops.ops.package",
    "probe_package": "pyops.ops.probe",
    "ProbeResult": "pyops.ops.probe",
    "Note": "pyops.ops.advice",
}

__all__ = [
    "Accel",
    "AuthError",
    "BuildConfig",
    "BuildFlags",
    "BuiltImage",
    "Cancelled",
    "CaseCollision",
    "ConfigError",
    "Contents",
    "DigestMismatch",
    "DiskFull",
    "DiskImage",
    "FilesystemFull",
    "HostFileError",
    "ImageFormatError",
    "ImageRef",
    "InvalidInput",
    "LibraryNotFound",
    "LimitExceeded",
    "Manifest",
    "ManifestNotFound",
    "NanosRelease",
    "NetworkError",
    "NotAnElf",
    "Note",
    "OpsConfig",
    "Package",
    "PackageError",
    "PlatformNotFound",
    "PortForward",
    "ProbeResult",
    "PulledImage",
    "PyopsError",
    "QemuError",
    "RegistryError",
    "ReleaseError",
    "Resolution",
    "RunFlags",
    "Store",
    "Tree",
    "UnsafeLayerPath",
    "VmConfig",
    "build_image",
    "build_package_image",
    "build_program",
    "from_docker",
    "get_release",
    "install_release_from",
    "installed_releases",
    "list_images",
    "list_packages",
    "load_config",
    "load_package",
    "open_image",
    "package_contents",
    "probe_package",
    "pull",
    "remove_image",
    "remove_package",
    "resolve",
    "run_package",
    "run_program",
    "run_vm",
    "write_disk",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyops' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from pyops.elf.ldd import Resolution, resolve
    from pyops.nanos.disk import DiskImage, open_image, write_disk
    from pyops.nanos.manifest import Manifest
    from pyops.nanos.release import (
        NanosRelease,
        get_release,
        install_release_from,
        installed_releases,
    )
    from pyops.nanos.tree import Tree
    from pyops.oci.pull import PulledImage, pull
    from pyops.oci.reference import ImageRef
    from pyops.oci.store import Store
    from pyops.ops.advice import Note
    from pyops.ops.build import BuildConfig, BuiltImage, build_image, build_package_image
    from pyops.ops.contents import Contents
    from pyops.ops.images import list_images, remove_image
    from pyops.ops.package import (
        Package,
        from_docker,
        list_packages,
        load_package,
        package_contents,
        remove_package,
    )
    from pyops.ops.probe import ProbeResult, probe_package
    from pyops.vm.qemu import Accel, PortForward, VmConfig, run_vm
