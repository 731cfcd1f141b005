"""Ops's config.json: key rules, types, and how it merges with command-line values."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pyops.errors import ConfigError, InvalidInput, LimitExceeded, ReleaseError
from pyops.nanos.disk import open_image
from pyops.nanos.manifest import Manifest
from pyops.nanos.release import NanosRelease
from pyops.nanos.tfs import read_file_bytes
from pyops.nanos.tree import File, ImageData, Tree
from pyops.ops.build import klib_path, merge_config, write_image
from pyops.ops.config import (
    OpsConfig,
    RunSettings,
    default_config_path,
    expand_env,
    load_config,
    load_ops_config,
    merge_config_data,
    parse_config,
    parse_size,
)

from ..conftest import make_release_folder, tiny_elf


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def test_keys_match_case_insensitively(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            {
                "args": ["a"],
                "ENV": {"K": "v"},
                "BaseVolumeSz": "64m",
                "Klibs": ["ntp"],
                "runconfig": {"MEMORY": "1G", "Ports": ["80", "443:8443"], "CPUs": 2},
                "NameServers": ["1.1.1.1"],
                "ManifestPassthrough": {"n": 5, "flag": True, "nested": {"x": [1, "y"]}},
            },
        )
    )
    assert config.args == ("a",)
    assert config.env == {"K": "v"}
    assert config.base_volume_size == 64 << 20
    assert config.klibs == ("ntp",)
    assert config.run == RunSettings(ports=("80", "443:8443"), memory="1G", cpus=2)
    assert config.name_servers == ("1.1.1.1",)
    # numbers and booleans become strings instead of failing (Ops quirk 13)
    assert config.manifest_passthrough == {"n": "5", "flag": "t", "nested": {"x": ["1", "y"]}}
    assert config.base_dir == tmp_path


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"Argz": []}, "unknown key 'Argz'"),
        ({"RunConfig": {"Memroy": "1G"}}, "unknown key 'Memroy'"),
        ({"Args": "a b"}, "list of strings"),
        ({"RunConfig": {"Ports": [8080]}}, "list of strings"),
        ({"Env": {"A": 1}}, "values are strings"),
        ({"BaseVolumeSz": "100MB"}, "invalid BaseVolumeSz"),
        ({"Program": 3}, "must be a string, not a number"),
        ({"args": [], "Args": []}, "given twice"),
        ([], "must be a JSON object"),
    ],
)
def test_bad_configs_name_the_problem(data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"Args": [}')
    with pytest.raises(ConfigError, match="line 1"):
        load_config(tmp_path / "bad.json")


def test_ops_keys_pyops_does_not_use_are_accepted() -> None:
    config = parse_config({"CloudConfig": {"Zone": "x"}, "RunConfig": {"Bridged": True}})
    assert config == OpsConfig()


def test_every_field_of_ops_types_config_is_known() -> None:
    """Each field of Ops's types/config.go, nested structs included, spelled as Ops's JSON
    names it: accepted (and what pyops does not use, ignored)."""
    config = parse_config(
        {
            "DisableArgsCopy": True,
            "UefiBoot": "b.efi",
            "Uefi": False,
            "BuildDir": "/tmp/b",
            "TargetConfig": {"a": "b"},
            "Force": True,
            "home": "/h",
            "NightlyBuild": False,
            "ProgramPath": "/p",
            "TFSv4": False,
            "Version": "1",
            "Language": "c",
            "Description": "d",
            "VolumesDir": "/v",
            "PackageBaseURL": "u",
            "PackageManifestURL": "u",
            "CloudConfig": {
                "BucketName": "b",
                "BucketNamespace": "n",
                "ConfidentialVM": True,
                "DedicatedHostID": "h",
                "DomainName": "d",
                "StaticIP": "1.2.3.4",
                "EnableIPv6": True,
                "Flavor": "f",
                "ImageType": "t",
                "ImageName": "i",
                "InstanceProfile": "p",
                "KMS": "k",
                "Platform": "gcp",
                "ProjectID": "p",
                "RootVolume": {"name": "r", "iops": 1, "size": 2, "throughput": 3, "typeof": "t"},
                "SecurityGroup": "s",
                "SkipImportVerify": True,
                "Spot": True,
                "Subnet": "s",
                "Tags": [
                    {
                        "key": "k",
                        "value": "v",
                        "attribute": {
                            "image_label": True,
                            "instance_label": None,
                            "instance_network": False,
                            "instance_metadata": True,
                        },
                    }
                ],
                "UserData": "u",
                "VPC": "v",
                "Zone": "z",
            },
            "RunConfig": {
                "AtExit": "true",
                "Bridged": True,
                "BridgeIPAddress": "1.2.3.4",
                "BridgeName": "br0",
                "CanIPForward": True,
                "GPUs": 1,
                "GPUType": "t",
                "Debug": False,
                "Gateway": "g",
                "GdbPort": 1,
                "InstanceGroup": "g",
                "InstanceName": "n",
                "IPAddress": "tomato",
                "IPv6Address": "::1",
                "Kernel": "k",
                "Mgmt": "1",
                "Vga": True,
                "AttachVolumeOnInstanceCreate": True,
                "NetMask": "m",
                "Nics": [
                    {
                        "IPAddress": "a",
                        "IPv6Address": "b",
                        "NetMask": "c",
                        "Gateway": "d",
                        "BridgeName": "e",
                    }
                ],
                "Background": True,
                "BackgroundDetach": False,
                "QMP": True,
                "ShowDebug": True,
                "ShowErrors": True,
                "ShowWarnings": True,
                "JSON": True,
                "TapName": "tap0",
                "VolumeSizeInGb": 1,
                "ThreadsPerCore": 2,
            },
        }  # fmt: skip
    )
    # The repository's URLs are used (pyops.ops.repository); everything else is ignored.
    assert config == OpsConfig(package_manifest_url="u", package_base_url="u")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"CloudConfig": {"Zones": "x"}}, "CloudConfig: unknown key 'Zones'"),
        ({"CloudConfig": {"RootVolume": {"sise": 1}}}, "RootVolume: unknown key 'sise'"),
        ({"CloudConfig": {"Tags": [{"key": "k", "val": "v"}]}}, r"Tags\[0\]: unknown key"),
        ({"CloudConfig": {"Tags": [{"attribute": {"label": True}}]}}, "unknown key 'label'"),
        ({"RunConfig": {"Nics": [{"IP": "x"}]}}, r"Nics\[0\]: unknown key 'IP'"),
        # RunConfig.VirtfsShares is json:"-" in Ops: its decoder does not know it either
        ({"RunConfig": {"VirtfsShares": {}}}, "unknown key 'VirtfsShares'"),
        ({"Runtime": "node"}, "unknown key 'Runtime'"),
        ({"CloudConfig": {"Spot": "yes"}}, "CloudConfig.Spot must be true or false"),
        ({"CloudConfig": {"RootVolume": {"size": 1.5}}}, "size must be a whole number"),
        ({"RunConfig": {"GdbPort": "1234"}}, "GdbPort must be a whole number"),
        ({"RunConfig": {"Debug": 1}}, "Debug must be true or false"),
        ({"RunConfig": {"Nics": {}}}, "Nics must be a list of objects"),
        ({"TargetConfig": {"a": 1}}, "values are strings"),
        ({"CloudConfig": []}, "CloudConfig must be a JSON object"),
        ({"KlibDir": ["a"]}, "KlibDir must be a string"),
    ],
)
def test_unknown_keys_and_wrong_types_are_refused_where_ops_refuses_them(
    data: object, message: str
) -> None:
    """Ops decodes with DisallowUnknownFields, which holds in every nested struct, and Go's
    types: pyops refuses the same keys and values, also where it ignores the field."""
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_an_unknown_key_gets_the_nearest_ops_key_as_hint() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"RunConfig": {"Memroy": "1G"}})
    assert caught.value.hint is not None and "'Memory'" in caught.value.hint


def test_keys_fold_as_gos_decoder_folds_them() -> None:
    """Go's decoder matches keys with bytes.EqualFold: U+017F (long s) folds to s and the
    Kelvin sign to k, nothing else non-ASCII does."""
    assert parse_config({"Arg\u017f": ["a"], "\u212alibs": ["ntp"]}).args == ("a",)
    assert parse_config({"\u212alibs": ["ntp"]}).klibs == ("ntp",)
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"Arg\u00df": ["a"]})  # sharp s folds to "ss" only in full folding


def test_null_is_what_gos_decoder_makes_of_it() -> None:
    config = parse_config(
        {"Program": None, "Args": None, "Env": None, "RunConfig": None, "BaseVolumeSz": ""}
    )
    assert config == OpsConfig()
    assert parse_config({"RunConfig": {"CPUs": -1, "Memory": ""}}).run == RunSettings()


def test_klib_dir_is_read() -> None:
    assert parse_config({"KlibDir": "/opt/klibs"}).klib_dir == "/opt/klibs"
    assert parse_config({"klibdir": ""}).klib_dir is None


def test_a_huge_or_endless_config_file_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYOPS_LIMIT_JSON_BYTES", "1000")
    big = tmp_path / "big.json"
    big.write_text('{"Args": ["' + "a" * 2000 + '"]}')
    with pytest.raises(LimitExceeded, match="JSON_BYTES"):
        load_config(big)
    with pytest.raises(LimitExceeded, match="JSON_BYTES"):
        load_config("/dev/zero")
    (tmp_path / "latin1.json").write_bytes(b'{"Args": ["\xe9"]}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "latin1.json")


# --- ops_render_config: the config's environment variables (cmd/flags_config.go) ----------


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("$USER and ${USER}", "bob and bob"),
        ("${HOME}/x", "/home/bob/x"),
        ("$UNSET.", "."),  # an unset variable is empty
        ("$USER_x", ""),  # a name is letters, digits and _
        ("$USER-x", "bob-x"),
        ("a$", "a$"),  # a $ at the end stays
        ("$ x", "$ x"),  # a $ before anything else stays
        ("$$", ""),  # $$ is the special variable "$" (unset)
        ("$1a", "onea"),  # $1 is a special variable of one character
        ("${1}", "one"),
        ("${}", ""),  # bad syntax: dropped
        ("x${USER", "xUSER"),  # unclosed: "${" dropped
        ("${A B}", "spaced"),  # ${...} takes anything up to the first }
        ("\\$USER", "\\bob"),  # there is no escape
    ],
)
def test_variables_expand_as_gos_os_expandenv(text: str, expanded: str) -> None:
    env = {"USER": "bob", "HOME": "/home/bob", "1": "one", "A B": "spaced"}
    assert expand_env(text, env) == expanded


def test_ops_render_config_expands_the_file_only_when_true(tmp_path: Path) -> None:
    """The README's example config of Ops, with ops_render_config=true (exactly)."""
    path = tmp_path / "config.json"
    path.write_text(
        '{"Args": ["--user", "${USER}", "--password", "$PASSWORD"], "Dirs": ["myapp/static"]}'
    )
    env = {"USER": "bob", "PASSWORD": "s3cret", "ops_render_config": "true"}
    assert load_config(path, environ=env).args == ("--user", "bob", "--password", "s3cret")
    for off in ("TRUE", "1", ""):
        unexpanded = load_config(path, environ={**env, "ops_render_config": off})
        assert unexpanded.args == ("--user", "${USER}", "--password", "$PASSWORD")
    path.write_text('{"RunConfig": {"CPUs": $CPUS}}')
    assert load_config(path, environ={"CPUS": "4", "ops_render_config": "true"}).run.cpus == 4
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.hint is not None and "ops_render_config=true" in caught.value.hint


def test_expansion_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert expand_env("$A$A", {"A": "x" * 10}, limit=20) == "x" * 20
    with pytest.raises(LimitExceeded, match="expanded"):
        expand_env("$A$A$A", {"A": "x" * 10}, limit=20)
    monkeypatch.setenv("PYOPS_LIMIT_JSON_BYTES", "1000")
    path = tmp_path / "config.json"
    path.write_text('{"Args": ["' + "$A" * 100 + '"]}')
    with pytest.raises(LimitExceeded, match="JSON_BYTES"):
        load_config(path, environ={"A": "y" * 100, "ops_render_config": "true"})


# --- the default config: OPS_DEFAULT_CONFIG or ~/.opsrc (lepton/config.go: NewConfig) -------


def test_the_default_config_is_opsrc_or_ops_default_config(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    assert default_config_path({}, home) is None
    (home / ".opsrc").write_text("{}")
    assert default_config_path({}, home) == home / ".opsrc"
    named = tmp_path / "defaults.json"
    assert default_config_path({"OPS_DEFAULT_CONFIG": str(named)}, home) == named
    assert default_config_path({"OPS_DEFAULT_CONFIG": ""}, home) == home / ".opsrc"


def test_the_file_is_merged_over_the_defaults_as_gos_decoder_fills_a_struct(
    tmp_path: Path,
) -> None:
    """Ops decodes -c's file into the config NewConfig read from ~/.opsrc: a key of the
    file replaces the default's; RunConfig merges field by field; Env, MapDirs and
    ManifestPassthrough key by key; lists are replaced; null empties a list or a map."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".opsrc").write_text(
        json.dumps(
            {
                "Args": ["default"],
                "Klibs": ["ntp"],
                "Env": {"A": "default", "B": "default"},
                "NameServers": ["9.9.9.9"],
                "ManifestPassthrough": {"x": "1", "nested": {"a": "1"}},
                "RunConfig": {"Memory": "1G", "Ports": ["80"], "CPUs": 2},
                "NanosVersion": "0.1.50",
                "CloudConfig": {"Zone": "z", "NotAnOpsKey": 1},  # lenient: ignored
                "AlsoUnknown": True,
            }
        )
    )
    project = tmp_path / "project"
    project.mkdir()
    path = project / "config.json"
    path.write_text(
        json.dumps(
            {
                "args": ["file"],
                "Klibs": None,
                "Env": {"B": "file"},
                "ManifestPassthrough": {"nested": {"b": "2"}},
                "RunConfig": {"memory": "3G", "Ports": []},
                "NanosVersion": None,
            }
        )
    )
    config = load_ops_config(path, environ={}, home=home)
    assert config.args == ("file",)
    assert config.klibs == ()
    assert config.env == {"A": "default", "B": "file"}
    assert config.name_servers == ("9.9.9.9",)
    assert config.manifest_passthrough == {"x": "1", "nested": {"b": "2"}}
    assert config.run == RunSettings(memory="3G", cpus=2)
    assert config.nanos_version == "0.1.50"  # null leaves a single value as it was
    assert config.base_dir == project
    # without -c: the defaults alone, relative to the current folder
    alone = load_ops_config(None, environ={}, home=home)
    assert alone.args == ("default",) and alone.run.memory == "1G"
    assert alone.base_dir == Path(".")
    assert load_ops_config(None, environ={}, home=tmp_path) == OpsConfig()


def test_the_default_config_is_lenient_but_typed(tmp_path: Path) -> None:
    """Ops reads ~/.opsrc with json.Unmarshal: unknown keys are ignored, wrong types are
    fatal; the -c file stays strict. pyops names the file at fault."""
    defaults = tmp_path / "defaults.json"
    env = {"OPS_DEFAULT_CONFIG": str(defaults)}
    defaults.write_text('{"Unknown": 1, "RunConfig": {"Memroy": "1G"}, "Args": ["a"]}')
    assert load_ops_config(None, environ=env).args == ("a",)
    defaults.write_text('{"Args": "a"}')
    with pytest.raises(ConfigError, match="defaults.json: Args must be a list"):
        load_ops_config(None, environ=env)
    defaults.write_text('{"BaseVolumeSz": "100MB"}')
    with pytest.raises(ConfigError, match="invalid BaseVolumeSz"):
        load_ops_config(None, environ=env)
    defaults.write_text("{")
    with pytest.raises(ConfigError, match="defaults.json: invalid JSON"):
        load_ops_config(None, environ=env)
    defaults.write_text("{}")
    strict = tmp_path / "config.json"
    strict.write_text('{"Unknown": 1}')
    with pytest.raises(ConfigError, match="unknown key 'Unknown'"):
        load_ops_config(strict, environ=env)


def test_the_defaults_are_not_expanded_and_lose_their_parent_directory(tmp_path: Path) -> None:
    """Ops expands only -c's file, and NewConfig sets LocalFilesParentDirectory to "."
    after reading the defaults."""
    defaults = tmp_path / "defaults.json"
    defaults.write_text('{"Args": ["$USER"], "LocalFilesParentDirectory": "/elsewhere"}')
    env = {"OPS_DEFAULT_CONFIG": str(defaults), "USER": "bob", "ops_render_config": "true"}
    config = load_ops_config(None, environ=env)
    assert config.args == ("$USER",) and config.base_dir == Path(".")


def test_a_missing_ops_default_config_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ops logs the error reading OPS_DEFAULT_CONFIG's file and goes on without it."""
    env = {"OPS_DEFAULT_CONFIG": str(tmp_path / "missing.json")}
    with caplog.at_level(logging.WARNING):
        assert load_ops_config(None, environ=env) == OpsConfig()
    assert "missing.json: no such config file" in caplog.text


def test_the_cli_reads_the_default_config_with_and_without_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyops.cli._app import _load_ops_config

    home = tmp_path / "home"
    home.mkdir()
    (home / ".opsrc").write_text('{"Env": {"FROM": "opsrc"}, "Klibs": ["ntp"]}')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("OPS_DEFAULT_CONFIG")
    assert _load_ops_config(None).env == {"FROM": "opsrc"}
    path = write(tmp_path, {"Klibs": ["tls"]})
    config = _load_ops_config(str(path))
    assert config.env == {"FROM": "opsrc"} and config.klibs == ("tls",)


def test_merge_config_data_spells_keys_as_ops_fields() -> None:
    merged = merge_config_data(
        {"env": {"A": "1"}, "runconfig": {"memory": "1G", "Nope": 1}},
        {"ENV": {"B": "2"}, "RunConfig": {"CPUs": 2}},
    )
    assert merged == {"Env": {"A": "1", "B": "2"}, "RunConfig": {"Memory": "1G", "CPUs": 2}}


def test_sizes() -> None:
    assert parse_size("512") == 512
    assert parse_size("2k") == 2048
    assert parse_size("3G") == 3 << 30


def test_flags_override_the_file_only_when_given(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("x")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "a.css").write_text("a")
    ops = parse_config(
        {
            "Program": "/bin/app",
            "Args": ["from-file"],
            "Env": {"A": "file", "B": "file"},
            "Files": ["data.txt", str(tmp_path / "data.txt")],
            "MapDirs": {"assets/*": "/srv/static"},
            "Debugflags": ["trace"],
            "ManifestPassthrough": {"program": "/override"},
        },
        base_dir=tmp_path,
    )
    merged = merge_config(ops, None, cwd=str(tmp_path))
    assert merged.program == "/bin/app"
    assert merged.args == ("from-file",)
    assert (str(tmp_path / "data.txt"), "/data.txt") in merged.extra_paths
    assert (str(tmp_path / "data.txt"), str(tmp_path / "data.txt")) in merged.extra_paths
    assert (str(tmp_path / "assets" / "a.css"), "/srv/static/a.css") in merged.extra_paths
    assert merged.extra_manifest == {"trace": "t", "program": "/override"}
    flags = merge_config(
        ops, "/bin/other", args=["from-flag"], env={"B": "flag"}, cwd=str(tmp_path)
    )
    assert flags.program == "/bin/other"
    assert flags.args == ("from-flag",)
    assert flags.env == {"A": "file", "B": "flag"}


def test_no_program_anywhere() -> None:
    with pytest.raises(InvalidInput, match="no program"):
        merge_config(OpsConfig(), None)


# --- KlibDir: klibs from a host folder (lepton/image.go: setManifestFromConfig) ------------


def test_klibs_are_taken_from_klib_dir_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ops takes every klib from KlibDir when it is set (and skips, with a printed line, one
    that is not there). Deliberate difference: pyops takes a klib missing from KlibDir from
    the release, and one in neither is an error naming both."""
    monkeypatch.setenv("PYOPS_HOME", str(tmp_path / "home"))
    release = NanosRelease.from_folder(make_release_folder(tmp_path / "release"), "0.1.99")
    klibs = tmp_path / "klibs"
    klibs.mkdir()
    mine = tiny_elf(62, b"my klib")
    (klibs / "mine").write_bytes(mine)
    (klibs / "ntp").write_bytes(tiny_elf(62, b"my ntp"))
    assert klib_path("mine", release, str(klibs)) == klibs / "mine"
    assert klib_path("ntp", release, str(klibs)) == klibs / "ntp"
    assert klib_path("tls", release, str(klibs)) == release.klibs["tls"]
    assert klib_path("ntp", release) == release.klibs["ntp"]
    with pytest.raises(ReleaseError) as caught:
        klib_path("nosuch", release, str(klibs))
    assert str(klibs) in str(caught.value) and str(release.path / "klibs") in str(caught.value)
    with pytest.raises(InvalidInput, match="invalid klib name"):
        klib_path("../mine", release, str(klibs))
    # a relative KlibDir is the current folder's, as in Ops
    ops = parse_config({"KlibDir": "klibs", "Klibs": ["mine", "tls"]})
    config = merge_config(ops, "/bin/true", cwd=str(tmp_path))
    assert config.klib_dir == str(klibs)
    tree = Tree()
    tree.add_file("/x", b"x")
    manifest = Manifest(program="/x", arguments=("/x",), klibs="bootfs")
    built = write_image(tree, manifest, release, config, tmp_path / "out.img")
    boot = open_image(built.path).boot_tree()
    assert boot is not None
    node = boot.get("/klib/mine")
    assert isinstance(node, File) and isinstance(node.source, ImageData)
    assert read_file_bytes(node.source) == mine
    assert boot.exists("/klib/tls")
