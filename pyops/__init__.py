"""pyops: build and boot Nanos unikernel images from Linux programs and OCI images.

The public API, importable from ``pyops`` (loaded on first use, so ``import pyops`` stays
fast)::

    import pyops

    pkg = pyops.from_docker("node:20", "node")               # pull and package
    release = pyops.get_release()                             # a Nanos release
    built = pyops.build_package_image(pkg, pyops.BuildConfig(program=pkg.program,
                                      args=("hi.js",)), release, "node.img")
    code = pyops.run_vm(built.path, pyops.VmConfig(memory="1G"))

Lower-level modules: :mod:`pyops.tfs` and :mod:`pyops.disk` (the image format),
:mod:`pyops.ldd` (a static ``ldd`` for any root), :mod:`pyops.registry` and :mod:`pyops.oci`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pyops.errors import (
    AuthError,
    ConfigError,
    DigestMismatch,
    FilesystemFull,
    HostFileError,
    ImageFormatError,
    InvalidInput,
    LibraryNotFound,
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
    "ImageRef": "pyops.reference",
    "Store": "pyops.store",
    "pull": "pyops.pull",
    "PulledImage": "pyops.pull",
    "Package": "pyops.package",
    "from_docker": "pyops.package",
    "load_package": "pyops.package",
    "list_packages": "pyops.package",
    "remove_package": "pyops.package",
    "BuildConfig": "pyops.build",
    "BuiltImage": "pyops.build",
    "build_image": "pyops.build",
    "build_package_image": "pyops.build",
    "NanosRelease": "pyops.release",
    "get_release": "pyops.release",
    "install_release_from": "pyops.release",
    "installed_releases": "pyops.release",
    "VmConfig": "pyops.qemu",
    "Accel": "pyops.qemu",
    "PortForward": "pyops.qemu",
    "run_vm": "pyops.qemu",
    "DiskImage": "pyops.disk",
    "open_image": "pyops.disk",
    "write_disk": "pyops.disk",
    "Tree": "pyops.tree",
    "Manifest": "pyops.manifest",
    "resolve": "pyops.ldd",
    "Resolution": "pyops.ldd",
    "list_images": "pyops.images",
    "remove_image": "pyops.images",
}

__all__ = [
    "Accel",
    "AuthError",
    "BuildConfig",
    "BuiltImage",
    "ConfigError",
    "DigestMismatch",
    "DiskImage",
    "FilesystemFull",
    "HostFileError",
    "ImageFormatError",
    "ImageRef",
    "InvalidInput",
    "LibraryNotFound",
    "Manifest",
    "ManifestNotFound",
    "NanosRelease",
    "NetworkError",
    "NotAnElf",
    "Package",
    "PackageError",
    "PlatformNotFound",
    "PortForward",
    "PulledImage",
    "PyopsError",
    "QemuError",
    "RegistryError",
    "ReleaseError",
    "Resolution",
    "Store",
    "Tree",
    "UnsafeLayerPath",
    "VmConfig",
    "build_image",
    "build_package_image",
    "from_docker",
    "get_release",
    "install_release_from",
    "installed_releases",
    "list_images",
    "list_packages",
    "load_package",
    "open_image",
    "pull",
    "remove_image",
    "remove_package",
    "resolve",
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
    from pyops.build import BuildConfig, BuiltImage, build_image, build_package_image
    from pyops.disk import DiskImage, open_image, write_disk
    from pyops.images import list_images, remove_image
    from pyops.ldd import Resolution, resolve
    from pyops.manifest import Manifest
    from pyops.package import Package, from_docker, list_packages, load_package, remove_package
    from pyops.pull import PulledImage, pull
    from pyops.qemu import Accel, PortForward, VmConfig, run_vm
    from pyops.reference import ImageRef
    from pyops.release import NanosRelease, get_release, install_release_from, installed_releases
    from pyops.store import Store
    from pyops.tree import Tree
