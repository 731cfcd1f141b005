"""Ops's own test cases of config.json and of how flags merge with it, as facts pyops keeps.

Each test names the Ops test function (in the nanovms/ops repository) its case comes from.
Where pyops differs from Ops on purpose (ops-reference.md's quirks checklist), the test
checks pyops's behaviour and its docstring says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyops.errors import ConfigError
from pyops.nanos.release import NanosRelease
from pyops.nanos.tree import Tree
from pyops.ops.build import (
    RESOLV_CONF,
    add_standard_files,
    manifest_for,
    merge_config,
    package_manifest,
    parse_env,
    program_path,
)
from pyops.ops.config import load_config, merge_ports, parse_config, parse_size
from pyops.ops.package import Package
from pyops.ops.recipes import BuildFlags, RunFlags, _with_debug_keys, vm_config
from pyops.vm.qemu import Accel, Host, PortForward

from ..conftest import make_release_folder

HOST = Host("Linux", "x86_64", kvm=False, hvf=False)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> NanosRelease:
    folder = make_release_folder(tmp_path_factory.mktemp("release") / "0.1.55")
    return NanosRelease.from_folder(folder, "0.1.55")


# --- cmd/flags_config_test.go -----------------------------------------------------------


def test_config_flags_merge_file_configuration(tmp_path: Path) -> None:
    """TestConfigFlagsMergeToConfig, "should merge file configuration": the file as Ops's
    writeConfigToFile marshals it (a CloudConfig carries its RootVolume's zero fields)."""
    path = tmp_path / "config.json"
    marshalled = {
        "CloudConfig": {
            "BucketName": "thebucketname",
            "ProjectID": "projectid",
            "RootVolume": {"iops": 0, "name": "", "size": 0, "throughput": 0, "typeof": ""},
        },
        "LocalFilesParentDirectory": ".",
        "RunConfig": {
            "Gateway": "192.168.1.254",
            "IPAddress": "192.168.1.5",
            "Memory": "2G",
            "NetMask": "255.255.255.0",
        },
        "VolumesDir": "/root/.ops/volumes",
    }
    path.write_text(json.dumps(marshalled, indent=2))
    config = load_config(path, environ={})
    assert config.run.memory == "2G"
    assert config.base_dir == tmp_path  # Ops: path.Dir of the file, here "."


def test_config_flags_ignore_invalid_ip_addresses(tmp_path: Path) -> None:
    """TestConfigFlagsMergeToConfig, "should ignore ip/gateway/netmask if they are not valid
    ip addresses": Ops clears them; pyops does not use these keys, and accepts them too."""
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "CloudConfig": {"BucketName": "thebucketname", "ProjectID": "projectid"},
                "RunConfig": {
                    "Memory": "2G",
                    "IPAddress": "tomato",
                    "NetMask": "potato",
                    "Gateway": "cheese",
                },
                "VolumesDir": "/root/.ops/volumes",
            }
        )
    )
    assert load_config(path, environ={}).run.memory == "2G"


@pytest.mark.parametrize(
    ("text", "unknown"),
    [
        # "should return error if property does not exist in config struct"
        ('{"A":1}', "A"),
        # "should return error if nested property does not exist in config struct"
        ('{"RunConfig":{"A":1}}', "A"),
        # "should return error if some properties do not exist in config struct": the first
        ('{"RunConfig":{"Accel":false,"Test2":"b","Test3":"c"}}', "Test2"),
        # "should return error if properties in first level do not exist in config struct"
        ('{"RunConfig":{"Accel":false},"test":"b"}', "test"),
    ],
)
def test_convert_json_to_config_refuses_unknown_fields(
    tmp_path: Path, text: str, unknown: str
) -> None:
    """TestConvertJsonToConfig: Ops's error is json: unknown field "X"."""
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"unknown key '{unknown}'"):
        load_config(path, environ={})


def test_convert_json_to_config_accepts_known_fields(tmp_path: Path) -> None:
    """TestConvertJsonToConfig, "should convert config successfully if all properties are
    known"."""
    path = tmp_path / "config.json"
    path.write_text('{"RunConfig":{"Accel":false}}')
    assert load_config(path, environ={}).run.accel is False


# --- cmd/flags_run_local_instance_test.go -------------------------------------------------


def test_run_local_instance_flags_merge_configuration() -> None:
    """TestRunLocalInstanceFlagsMergeToConfig, "should merge configuration": -p
    80,81,82-85, --trace, --syscall-summary, --no-trace a, -g 1234, --accel, -m 64M,
    --smp 2 give Memory 64M, CPUs 2, GdbPort 1234, Ports 80, 81, 82-85 (host 82 to guest
    85), the trace debug flags and syscall_summary, NoTrace a and the strace klib."""
    run = RunFlags(
        ports=("80,81,82-85",), memory="64M", cpus=2, accel="true", verbose=True, gdb_port=1234
    )
    vm = vm_config(parse_config({}), run, HOST)
    assert vm.memory == "64M" and vm.cpus == 2 and vm.gdb_port == 1234
    assert vm.accel == Accel.AUTO
    assert vm.ports == (PortForward(80, 80), PortForward(81, 81), PortForward(82, 85))
    flags = BuildFlags(trace=True, syscall_summary=True, no_trace=("a",))
    config = _with_debug_keys(merge_config(parse_config({}), "/bin/app"), flags)
    keys = ("trace", "debugsyscalls", "fault", "futex_trace", "syscall_summary")
    assert config.extra_manifest == {**dict.fromkeys(keys, "t"), "notrace": ["a"]}
    assert config.klibs == ("strace",)


def test_run_local_instance_flags_join_ports_de_duplicated() -> None:
    """TestRunLocalInstanceFlagsMergeToConfig, "should join existing ports with flags ports
    de-duplicated": RunConfig.Ports [80, 90] and -p 80,81,82-85 give 80, 90, 81, 82-85,
    which is also the guest's OPS_PORT (lepton/image.go: setManifestFromConfig)."""
    assert merge_ports(("80", "90"), ("80,81,82-85",)) == ("80", "90", "81", "82-85")
    ops = parse_config({"RunConfig": {"Ports": ["80", "90"]}})
    vm = vm_config(ops, RunFlags(ports=("80,81,82-85",)), HOST)
    assert [p.host for p in vm.ports] == [80, 90, 81, 82]
    config = merge_config(ops, "/bin/app", env={"OPS_PORT": "mine"}, ports=("80,81,82-85",))
    assert config.env["OPS_PORT"] == "80,90,81,82-85"  # set after Env, as Ops sets it
    assert merge_config(ops, "/bin/app").env["OPS_PORT"] == "80,90"  # build: the file's
    assert "OPS_PORT" not in merge_config(parse_config({}), "/bin/app").env


def test_run_flags_override_accel_memory_and_debugflags_only_when_given() -> None:
    """Deliberate difference (quirk 7): Ops's run always sets Accel, Verbose and Bridged
    from the flags and drops config.json's Debugflags; pyops keeps the file's values unless
    a flag is given, and keeps its Debugflags beside the flags' debugging keys."""
    ops = parse_config(
        {"Debugflags": ["x"], "RunConfig": {"Accel": False, "Memory": "1G", "Verbose": True}}
    )
    assert vm_config(ops, RunFlags(), HOST).accel == Accel.TCG
    assert vm_config(ops, RunFlags(accel="true"), HOST).accel == Accel.AUTO
    assert vm_config(ops, RunFlags(), HOST).memory == "1G"
    assert vm_config(parse_config({}), RunFlags(), HOST).memory == "2G"  # NewConfig's
    config = _with_debug_keys(merge_config(ops, "/bin/app"), BuildFlags(trace=True))
    assert config.extra_manifest["x"] == "t" and config.extra_manifest["trace"] == "t"


# --- cmd/flags_build_image_test.go --------------------------------------------------------


def test_build_image_flags_merge_into_configuration(release: NanosRelease) -> None:
    """TestBuildImageFlagsMergeToConfig, "should merge flags into configuration": Program
    MyTestApp, -a "a b c d", -e test=1234, -r unix, -i test-image give argv [MyTestApp,
    "a b c d"], Env test=1234, TargetRoot unix, image name test-image (IMAGE_NAME) and
    the name server 8.8.8.8."""
    ops = parse_config({"Program": "MyTestApp"})
    config = merge_config(
        ops,
        None,
        args=["a b c d"],
        env=parse_env(["test=1234"]),
        target_root="unix",
        name="test-image",
    )
    assert (config.program, config.target_root, config.name) == ("MyTestApp", "unix", "test-image")
    manifest = manifest_for(
        config, program_path(config.program, config.target_root), release, "test-image"
    )
    assert manifest.arguments == ("MyTestApp", "a b c d")
    assert manifest.environment["test"] == "1234"
    assert manifest.environment["IMAGE_NAME"] == "test-image"
    tree = Tree()
    add_standard_files(tree, name_servers=config.name_servers)
    assert RESOLV_CONF == b"nameserver 8.8.8.8\n" and tree.exists("/etc/resolv.conf")


def test_flag_args_replace_the_files_and_env_merges() -> None:
    """BuildImageCommandFlags.MergeToConfig: -a replaces config.json's Args, -e adds to
    its Env (the flag winning), -r and -i win when given."""
    ops = parse_config({"Args": ["file"], "Env": {"A": "file", "B": "file"}, "TargetRoot": "/file"})
    kept = merge_config(ops, "/bin/app")
    assert kept.args == ("file",) and kept.target_root == "/file"
    given = merge_config(ops, "/bin/app", args=["flag"], env={"B": "flag"}, target_root="/r")
    assert given.args == ("flag",) and given.target_root == "/r"
    assert given.env == {"A": "file", "B": "flag"}


def test_env_flag_keeps_everything_after_the_first_equals_sign() -> None:
    """Deliberate difference (quirk 5): Ops splits -e K=V=W on every "=" and keeps V."""
    assert parse_env(["K=V=W"]) == {"K": "V=W"}


# --- fs/mkfs_test.go ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("12", 512), ("1k", 1024), ("1K", 1024), ("16K", 16384), ("2M", 2 << 20), ("4G", 4 << 30)],
)
def test_mkfs_filesystem_sizes(text: str, size: int) -> None:
    """TestMKFSCommand, "filesystem size": the size in bytes, rounded up to 512-byte
    sectors (pyops's disk writer rounds it; parse_size gives the bytes)."""
    assert (parse_size(text, "BaseVolumeSz") + 511) // 512 * 512 == size
    assert parse_config({"BaseVolumeSz": text}).base_volume_size == parse_size(text)


@pytest.mark.parametrize("text", ["size", "2s", "100MB"])
def test_mkfs_invalid_sizes(text: str) -> None:
    """TestMKFSCommand: "size" and "2s" are invalid. Deliberate difference: Ops ignores an
    invalid BaseVolumeSz without a word; pyops refuses it."""
    with pytest.raises(ConfigError, match="invalid BaseVolumeSz"):
        parse_config({"BaseVolumeSz": text})


# --- cmd/flags_pkg_test.go ----------------------------------------------------------------


def test_pkg_flags_merge_config_over_the_package(tmp_path: Path, release: NanosRelease) -> None:
    """TestPkgFlagsMergeToConfig: config.json's BaseVolumeSz (200m), NameServers (ops.net),
    TargetRoot and Env go with the package's (Env a, b from the package, c, d from the
    file), its Files, Dirs and MapDirs go in.

    Deliberate difference: Ops appends config.json's Args to the package's ([a, b, c, d]);
    pyops keeps the package's argv[0] and replaces the rest ([a, c, d]), as a command line
    given to ``docker run`` replaces the image's; and on a key both set, config.json's Env
    wins (Ops lets the package's win)."""
    for name in ("fc", "fd", "dc", "dd", "c", "d"):
        (tmp_path / name).mkdir()
    package = Package(
        name="pkg",
        path=tmp_path,
        program="ops",
        args=("a", "b"),
        env={"a": "vala", "b": "valb", "shared": "package"},
    )
    ops = parse_config(
        {
            "Args": ["c", "d"],
            "Dirs": ["dc", "dd"],
            "Files": ["fc", "fd"],
            "MapDirs": {"c/*": "/pathc", "d/*": "/pathd"},
            "Env": {"c": "valc", "d": "vald", "shared": "config"},
            "BaseVolumeSz": "200m",
            "NameServers": ["ops.net"],
            "TargetRoot": "unix",
        },
        base_dir=tmp_path,
    )
    config = merge_config(ops, package.program, cwd=str(tmp_path))
    assert config.size == 200 << 20
    assert config.name_servers == ("ops.net",)
    assert config.target_root == "unix"
    assert [path for _, path in config.extra_paths] == ["/fc", "/fd", "/dc", "/dd"]
    assert config.directories == ("/pathc", "/pathd")
    manifest = package_manifest(package, release, config, "ops")
    assert manifest.arguments == ("a", "c", "d")
    env = manifest.environment
    assert {k: env[k] for k in ("a", "b", "c", "d", "shared")} == {
        "a": "vala",
        "b": "valb",
        "c": "valc",
        "d": "vald",
        "shared": "config",
    }
