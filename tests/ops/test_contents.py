"""The content policy (pyops.ops.contents) on small roots laid out as real systems lay out
theirs: dpkg's and apk's databases, the interpreters' runtime trees, the working directory.

The real thing (Debian's own packages, booted) is in tests/ops/test_debian.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyops.errors import LimitExceeded
from pyops.ops.contents import (
    Contents,
    ImageRoot,
    Part,
    data_part,
    keep_named,
    named_in_image,
    named_paths,
    owner_parts,
    read_contents,
    runtime_trees,
    workdir_parts,
)

FAKE_CA = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


def put(root: Path, path: str, data: str = "x") -> None:
    host = root / path.lstrip("/")
    host.parent.mkdir(parents=True, exist_ok=True)
    host.write_text(data)


def link(root: Path, path: str, target: str) -> None:
    host = root / path.lstrip("/")
    host.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, host)


def merged_usr(root: Path) -> None:
    for top in ("bin", "sbin", "lib"):
        (root / "usr" / top).mkdir(parents=True, exist_ok=True)
        link(root, f"/{top}", f"usr/{top}")


DPKG_STATUS = """\
Package: nginx
Status: install ok installed
Architecture: amd64
Source: nginx
Version: 1.22.1-9
Depends: nginx-common (= 1.22.1-9), libc6 (>= 2.34), libssl3 (>= 3.0.0) | libssl-alt

Package: nginx-common
Status: install ok installed
Architecture: all
Source: nginx
Depends: lsb-base

Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc

Package: redis-tools
Status: install ok installed
Architecture: amd64
Source: redis (5:7.0.15-1)

Package: nginx-doc
Status: deinstall ok config-files
Architecture: all
Source: nginx
"""


def dpkg_root(root: Path) -> None:
    merged_usr(root)
    put(root, "/var/lib/dpkg/status", DPKG_STATUS)
    lists = {
        "nginx:amd64": ["/.", "/usr", "/usr/sbin", "/usr/sbin/nginx", "/usr/share/doc/nginx"],
        "nginx-common": [
            "/etc/nginx",
            "/etc/nginx/nginx.conf",
            "/etc/nginx/mime.types",
            "/var/lib/nginx",
            "/usr/share/doc/nginx-common/copyright",
            "/usr/share/man/man8/nginx.8.gz",
            "/usr/share/nginx/html/index.html",
        ],
        "libc6:amd64": ["/lib/x86_64-linux-gnu/libc.so.6"],
        "redis-tools:amd64": ["/usr/bin/redis-cli"],
    }
    for name, paths in lists.items():
        put(root, f"/var/lib/dpkg/info/{name}.list", "\n".join(paths) + "\n")
    for path in ("/usr/sbin/nginx", "/etc/nginx/nginx.conf", "/etc/nginx/mime.types"):
        put(root, path)
    (root / "var/lib/nginx").mkdir(parents=True)
    put(root, "/usr/share/doc/nginx-common/copyright")
    put(root, "/usr/share/man/man8/nginx.8.gz")
    put(root, "/usr/share/nginx/html/index.html", "<h1>hi</h1>")
    put(root, "/usr/lib/x86_64-linux-gnu/libc.so.6")


def test_dpkg_owner_and_its_same_source_dependencies_without_docs(tmp_path: Path) -> None:
    dpkg_root(tmp_path)
    # The program found as /sbin/nginx (merged /usr): dpkg lists /usr/sbin/nginx.
    parts = owner_parts(ImageRoot(tmp_path), ["/sbin", "/usr/sbin/nginx"])
    assert len(parts) == 1
    part = parts[0]
    # nginx-common comes (same source); libc6 (another source) and a removed package do not.
    assert part.reason == "dpkg packages nginx, nginx-common"
    assert "/etc/nginx/nginx.conf" in part.paths and "/etc/nginx/mime.types" in part.paths
    assert "/var/lib/nginx" in part.paths  # a folder the package ships, kept as a folder
    assert "/usr/share/nginx/html/index.html" in part.paths
    assert not [p for p in part.paths if p.startswith(("/usr/share/doc", "/usr/share/man"))]
    assert "/usr/lib/x86_64-linux-gnu/libc.so.6" not in part.paths
    # Listed paths are resolved in the image: "/." is the root, kept as it is.
    assert "/usr/sbin/nginx" in part.paths


def test_no_package_manager_or_no_owner(tmp_path: Path) -> None:
    put(tmp_path, "/usr/bin/app")
    assert owner_parts(ImageRoot(tmp_path), ["/usr/bin/app"]) == []
    dpkg_root(tmp_path / "d")
    put(tmp_path / "d", "/usr/local/bin/mine")
    assert owner_parts(ImageRoot(tmp_path / "d"), ["/usr/local/bin/mine"]) == []


def test_a_package_database_cannot_reach_the_host(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    # The image's dpkg folder is a symlink to a host folder: it is followed inside the root.
    outside = tmp_path / "host-dpkg"
    put(outside, "/status", DPKG_STATUS)
    link(root, "/var/lib/dpkg", os.fspath(outside))
    assert owner_parts(ImageRoot(root), ["/usr/sbin/nginx"]) == []
    # A listed path that climbs out stays in the root too.
    dpkg_root(tmp_path / "r2")
    lst = tmp_path / "r2/var/lib/dpkg/info/nginx:amd64.list"
    secret = tmp_path / "secret"
    secret.write_text("host file")
    lst.write_text(f"/usr/sbin/nginx\n/../../../..{secret}\n")
    part = owner_parts(ImageRoot(tmp_path / "r2"), ["/usr/sbin/nginx"])[0]
    assert all(not p.endswith("secret") for p in part.paths)


def test_a_huge_package_database_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dpkg_root(tmp_path)
    monkeypatch.setenv("PYOPS_LIMIT_PACKAGE_DB_BYTES", "100")
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_PACKAGE_DB_BYTES"):
        owner_parts(ImageRoot(tmp_path), ["/usr/sbin/nginx"])


APK_DB = """\
C:Q1abc=
P:redis
V:7.2.4-r0
o:redis
D:so:libc.musl-x86_64.so.1 redis-openrc>=7
F:usr/bin
R:redis-server
R:redis-cli
F:etc
R:redis.conf

P:redis-openrc
o:redis
F:etc/init.d
R:redis

P:musl
o:musl
F:lib
R:ld-musl-x86_64.so.1
"""


def test_apk_owner(tmp_path: Path) -> None:
    put(tmp_path, "/lib/apk/db/installed", APK_DB)
    for path in ("/usr/bin/redis-server", "/usr/bin/redis-cli", "/etc/redis.conf",
                 "/etc/init.d/redis", "/lib/ld-musl-x86_64.so.1"):  # fmt: skip
        put(tmp_path, path)
    (part,) = owner_parts(ImageRoot(tmp_path), ["/usr/bin/redis-server"])
    assert part.reason == "apk packages redis, redis-openrc"
    assert {"/etc/redis.conf", "/usr/bin/redis-cli", "/etc/init.d/redis"} <= set(part.paths)
    assert "/lib/ld-musl-x86_64.so.1" not in part.paths


def test_python_finds_its_prefix_as_cpython_does(tmp_path: Path) -> None:
    merged_usr(tmp_path)
    put(tmp_path, "/usr/bin/python3.11")
    put(tmp_path, "/usr/lib/python3.11/os.py")
    put(tmp_path, "/usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so")
    put(tmp_path, "/usr/lib/python3/dist-packages/six.py")
    put(tmp_path, "/opt/extra/mod.py")
    image = ImageRoot(tmp_path)
    (tree,) = runtime_trees(image, "/usr/bin/python3.11", {"PYTHONPATH": "/opt/extra:rel"})
    assert tree.name == "Python 3.11"
    assert tree.trees == ("/usr/lib/python3.11", "/usr/lib/python3/dist-packages", "/opt/extra")
    # The official image: /usr/local, and a python3 without a version in its name.
    put(tmp_path, "/usr/local/bin/python")
    put(tmp_path, "/usr/local/lib/python3.12/os.py")
    (tree,) = runtime_trees(image, "/usr/local/bin/python", {})
    assert tree.trees == ("/usr/local/lib/python3.12",)
    # PYTHONHOME wins; no landmark: nothing.
    assert runtime_trees(image, "/usr/bin/python3.11", {"PYTHONHOME": "/nowhere"}) == []


def test_node_ruby_perl_java_trees(tmp_path: Path) -> None:
    (tmp_path / "usr/lib/x86_64-linux-gnu/perl/5.36").mkdir(parents=True)
    (tmp_path / "usr/share/nodejs/acorn").mkdir(parents=True)
    (tmp_path / "usr/local/lib/node_modules/npm").mkdir(parents=True)
    (tmp_path / "usr/lib/ruby/3.1.0").mkdir(parents=True)
    (tmp_path / "usr/share/perl/5.36").mkdir(parents=True)
    (tmp_path / "etc/perl").mkdir(parents=True)
    put(tmp_path, "/usr/lib/jvm/java-17/lib/modules")
    image = ImageRoot(tmp_path)
    assert [t.trees for t in runtime_trees(image, "/usr/bin/node", {})] == [("/usr/share/nodejs",)]
    assert [t.trees for t in runtime_trees(image, "/usr/local/bin/node", {})] == [
        ("/usr/local/lib/node_modules",)
    ]
    assert [t.trees for t in runtime_trees(image, "/usr/bin/ruby3.1", {})] == [("/usr/lib/ruby",)]
    (perl,) = runtime_trees(image, "/usr/bin/perl", {})
    assert perl.trees == ("/etc/perl", "/usr/lib/x86_64-linux-gnu/perl", "/usr/share/perl")
    (java,) = runtime_trees(image, "/usr/lib/jvm/java-17/bin/java", {})
    assert java.trees == ("/usr/lib/jvm/java-17",)
    assert runtime_trees(image, "/usr/bin/redis-server", {}) == []


def test_working_directory_tree_but_not_a_system_folder(tmp_path: Path) -> None:
    put(tmp_path, "/app/hello.py")
    put(tmp_path, "/app/lib/util.py")
    put(tmp_path, "/srv/shared/data.txt")
    link(tmp_path, "/app/data.txt", "/srv/shared/data.txt")
    image = ImageRoot(tmp_path)
    (part,) = workdir_parts(image, "app/")
    # The link's target outside the folder comes too.
    assert set(part.paths) == {
        "/app", "/app/lib", "/app/data.txt", "/srv/shared/data.txt", "/app/hello.py",
        "/app/lib/util.py",
    }  # fmt: skip
    assert workdir_parts(image, "/") == [] and workdir_parts(image, "/usr") == []
    assert workdir_parts(image, "/missing") == []


def test_data_files_with_their_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    put(root, "/etc/ssl/certs/ca-certificates.crt", FAKE_CA)
    link(root, "/etc/ssl/cert.pem", "certs/ca-certificates.crt")  # Alpine
    put(root, "/var/ld.so.cache", "glibc-ld.so.cache1.1")
    link(root, "/etc/ld.so.cache", "/var/ld.so.cache")
    (root / "etc/pki/tls/certs/ca-bundle.crt").mkdir(parents=True)  # not a file: skipped
    link(root, "/etc/ssl/ca-bundle.pem", "/nowhere")  # dangling: skipped
    wanted = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/ssl/cert.pem",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ld.so.cache",
    ]
    part = data_part(ImageRoot(root), wanted)
    assert set(part.paths) == {
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/ssl/cert.pem",
        "/etc/ld.so.cache",
        "/var/ld.so.cache",
    }


def test_contents_first_reason_wins_and_round_trips(tmp_path: Path) -> None:
    contents = Contents(())
    contents = contents.adding(Part("program", "p", ("/a", "/b")))
    contents = contents.adding(Part("owner", "o", ("/b", "/c")))
    contents = contents.adding(Part("runtime", "r", ("/a",)))  # nothing new: no part
    assert [(p.kind, p.paths) for p in contents.parts] == [
        ("program", ("/a", "/b")),
        ("owner", ("/c",)),
    ]
    (tmp_path / "c.json").write_text(contents.to_json())
    assert read_contents(tmp_path / "c.json") == contents
    (tmp_path / "bad.json").write_text('{"parts": [{"paths": [1]}]}')
    assert read_contents(tmp_path / "bad.json") is None
    assert read_contents(tmp_path / "none.json") is None


def test_paths_a_text_names(tmp_path: Path) -> None:
    put(tmp_path, "/etc/app/app.conf")
    put(tmp_path, "/etc/motd")
    put(tmp_path, "/srv/site/index.html")
    put(tmp_path, "/usr/share/doc/app/README")
    (tmp_path / "run").mkdir()
    image = ImageRoot(tmp_path)
    text = "root /srv/site; pid /run/app.pid; see http://example.com/srv/x and /etc/. /proc/1"
    assert named_paths(text) == ["/srv/site", "/run/app.pid", "/etc/."]
    assert named_in_image(image, "/srv/site") == ("/srv/site", True)
    assert named_in_image(image, "/run/app.pid") == ("/run", False)
    assert named_in_image(image, "/nowhere/x") is None
    assert set(keep_named(image, "/srv/site")) == {"/srv/site", "/srv/site/index.html"}
    assert keep_named(image, "/run", whole=False) == ("/run",)
    # A system folder, however it is spelled, comes without what is in it; documentation never.
    assert keep_named(image, "/etc/.") == ("/etc",)
    assert keep_named(image, "/usr/share/doc") == ()
    assert keep_named(image, "/usr/share/doc/app/README") == ()
