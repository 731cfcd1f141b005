"""PYOPS_HOME, and where each thing pyops keeps lives in it: the one module that knows.

``PYOPS_HOME`` (default ``~/.pyops``) holds::

    blobs/            image layers, manifests and configs, by digest (pyops.oci.store)
    layers/           the layers' uncompressed tars, by diff_id (pyops.oci.rootindex)
    roots/            indexes of the roots those layers make (a cache: deleting it and
                      layers/ costs only time)
    images/NAME.img   built images, with NAME.img.key (what went into them)
    runs/NAME.img     the copy of NAME.img its last run booted and wrote to
    local_packages/   packages made by pkg from-docker, in Ops's format
    releases/VERSION  installed Nanos releases
    volumes/NAME:UUID.raw  TFS volumes to mount in a guest (pyops.ops.volumes)
    instances/NAME/   a virtual machine started in the background: its state, disk and log

Every function takes ``home`` to name another home (None: ``PYOPS_HOME``, else
``~/.pyops``).

Ops's own home, ``~/.ops``, can be pyops's too (``PYOPS_HOME=~/.ops``): it is laid out as Ops
lays it out, so that each tool lists, loads and boots what the other made. There, releases
are folders at the top (``~/.ops/0.1.55``, ``0.1.55-arm``, ``nightly``) and images have no
``.img`` (``images/NAME``, as Ops names them since 2022); packages (``local_packages/<arch>/``,
``packages/<arch>/``) and volumes are where both keep them anyway. What only pyops has
(run copies, instances, image keys) goes to a hidden ``.pyops/`` there, out of Ops's way
(Ops keeps its own instances in ``~/.ops/instances``); the caches are ``blobs/``,
``layers/`` and ``roots/``, which Ops does not use. :func:`layout` tells
which a home is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

Home = str | os.PathLike[str] | None

PYOPS = "pyops"
OPS = "ops"
LAYOUT_ENV = "PYOPS_HOME_LAYOUT"
"""``ops`` or ``pyops``: the layout of PYOPS_HOME, when it cannot be told (see layout)."""


def root(home: Home = None, env: Mapping[str, str] | None = None) -> Path:
    """The home folder: ``home`` if given, else ``$PYOPS_HOME``, else ``~/.pyops``."""
    if home is not None:
        return Path(home)
    value = (os.environ if env is None else env).get("PYOPS_HOME")
    return Path(value).expanduser() if value else Path.home() / ".pyops"


def layout(home: Home = None, env: Mapping[str, str] | None = None) -> str:
    """:data:`OPS` for a home laid out as Ops's ``~/.ops``, else :data:`PYOPS`.

    ``PYOPS_HOME_LAYOUT`` decides when set; otherwise a home with a ``releases`` folder is
    pyops's, and one named ``.ops``, or holding Ops's ``latest.txt`` or a release folder at
    its top, is Ops's."""
    environ = os.environ if env is None else env
    chosen = environ.get(LAYOUT_ENV, "").strip().lower()
    if chosen in (OPS, PYOPS):
        return chosen
    top = root(home, env)
    if (top / "releases").is_dir():
        return PYOPS
    if top.name == ".ops" or (top / "latest.txt").is_file():
        return OPS
    try:
        with os.scandir(top) as entries:
            for entry in entries:
                if entry.name[:1].isdigit() and os.path.isfile(
                    os.path.join(entry.path, "kernel.img")
                ):
                    return OPS
    except OSError:
        pass
    return PYOPS


def image_suffix(home: Home = None) -> str:
    """What an image's file name adds to the image's name: ``.img``, or nothing in Ops's
    layout."""
    return "" if layout(home) == OPS else ".img"


def _own(home: Home) -> Path:
    """Where the things only pyops has go: the home itself, or ``.pyops/`` in Ops's."""
    return root(home) / ".pyops" if layout(home) == OPS else root(home)


def blobs_dir(home: Home = None) -> Path:
    return root(home) / "blobs"  # pyops.oci.store's layout, the same in both


def images_dir(home: Home = None) -> Path:
    return root(home) / "images"


def image_file(name: str, home: Home = None) -> Path:
    """The file of the image ``name``: ``images/NAME.img``, or ``images/NAME`` in Ops's
    layout."""
    return images_dir(home) / f"{name}{image_suffix(home)}"


def image_key_file(image: str | os.PathLike[str], home: Home = None) -> Path:
    """Where the key of what went into ``image`` is kept: beside it (``NAME.img.key``), or,
    for an image of an Ops home, in ``.pyops/keys/`` (Ops lists every file of ``images/``)."""
    path = Path(image)
    if layout(home) == OPS and path.parent == images_dir(home):
        return _own(home) / "keys" / f"{path.name}.key"
    return path.with_name(path.name + ".key")


def runs_dir(home: Home = None) -> Path:
    return _own(home) / "runs"


def packages_dir(home: Home = None) -> Path:
    return root(home) / "local_packages"


def releases_dir(home: Home = None) -> Path:
    return root(home) if layout(home) == OPS else root(home) / "releases"


def volumes_dir(home: Home = None) -> Path:
    return root(home) / "volumes"


def instances_dir(home: Home = None) -> Path:
    return _own(home) / "instances"
