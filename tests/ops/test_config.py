"""Ops's config.json: key rules, types, and how it merges with command-line values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyops.errors import ConfigError, InvalidInput
from pyops.ops.build import merge_config
from pyops.ops.config import OpsConfig, RunSettings, load_config, parse_config, parse_size


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
