"""The Debian test images themselves (tests/debian_images.py): two layers, as ``FROM debian``
and ``apt-get install`` make them, with the spec's config."""

from __future__ import annotations

import gzip
import tarfile
from collections.abc import Callable
from pathlib import Path

from pyops.oci.pull import pull
from pyops.oci.store import Store

from .debian_images import IMAGES, debian_image, registries, rootfs_name  # noqa: F401


def test_cache_names_follow_the_package_list() -> None:
    assert rootfs_name(["nginx"]) != rootfs_name(["redis-server"])
    assert rootfs_name(["a", "b"]) == rootfs_name(["b", "a"])
    assert rootfs_name() != rootfs_name(["nginx"])


def test_redis_image_is_a_base_and_an_app_layer(
    debian_image: Callable[[str], str],  # noqa: F811
    tmp_path: Path,
) -> None:
    pulled = pull(debian_image("redis"), store=Store(tmp_path / "store"))
    assert len(pulled.layers) == 2
    spec = IMAGES["redis"]
    assert pulled.config.entrypoint == spec.entrypoint and pulled.config.cmd == spec.cmd
    with gzip.open(pulled.layers[0]) as raw, tarfile.open(fileobj=raw) as base:
        base_names = set(base.getnames())
    with gzip.open(pulled.layers[1]) as raw, tarfile.open(fileobj=raw) as app:
        app_names = set(app.getnames())
    strip = {name.removeprefix("./") for name in base_names}
    assert "usr/bin/dpkg" in strip and "usr/bin/redis-check-rdb" not in strip
    app_strip = {name.removeprefix("./") for name in app_names}
    assert {"usr/bin/redis-check-rdb", "etc/redis/redis.conf"} <= app_strip
    assert "usr/local/bin/docker-entrypoint.sh" in app_strip
