"""PYOPS_HOME, and where each thing pyops keeps lives in it: the one module that knows.

``PYOPS_HOME`` (default ``~/.pyops``) holds::

    blobs/            image layers, manifests and configs, by digest (pyops.oci.store)
    images/NAME.img   built images, with NAME.img.key (what went into them)
    runs/NAME.img     the copy of NAME.img its last run booted and wrote to
    local_packages/   packages made by pkg from-docker, in Ops's format
    releases/VERSION  installed Nanos releases
    volumes/NAME:UUID.raw  TFS volumes to mount in a guest (pyops.ops.volumes)
    instances/NAME/   a virtual machine started in the background: its state, disk and log

Every function takes ``home`` to name another home (None: ``PYOPS_HOME``, else
``~/.pyops``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

Home = str | os.PathLike[str] | None


def root(home: Home = None, env: Mapping[str, str] | None = None) -> Path:
    """The home folder: ``home`` if given, else ``$PYOPS_HOME``, else ``~/.pyops``."""
    if home is not None:
        return Path(home)
    value = (os.environ if env is None else env).get("PYOPS_HOME")
    return Path(value).expanduser() if value else Path.home() / ".pyops"


def blobs_dir(home: Home = None) -> Path:
    return root(home) / "blobs"


def images_dir(home: Home = None) -> Path:
    return root(home) / "images"


def runs_dir(home: Home = None) -> Path:
    return root(home) / "runs"


def packages_dir(home: Home = None) -> Path:
    return root(home) / "local_packages"


def releases_dir(home: Home = None) -> Path:
    return root(home) / "releases"


def volumes_dir(home: Home = None) -> Path:
    return root(home) / "volumes"


def instances_dir(home: Home = None) -> Path:
    return root(home) / "instances"
