"""Limits: defaults, raised through the environment, errors that name the way out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pyops import limits
from pyops.errors import ConfigError, LimitExceeded

README = Path(__file__).resolve().parent.parent / "README.md"


def test_a_limit_is_raised_through_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert limits.MANIFESTS.value() == limits.MANIFESTS.default
    monkeypatch.setenv("PYOPS_LIMIT_MANIFESTS", "1_000")
    assert limits.MANIFESTS.value() == 1000
    with pytest.raises(LimitExceeded, match=r"limit of 1,000 .*\(PYOPS_LIMIT_MANIFESTS\)"):
        limits.MANIFESTS.check(1001, "the pull")


@pytest.mark.parametrize("text", ["-1", "0", "1e9", "²", "9" * 40, "ten"])
def test_a_bad_limit_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("PYOPS_LIMIT_NEEDED", text)
    with pytest.raises(ConfigError, match="PYOPS_LIMIT_NEEDED"):
        limits.NEEDED.value()


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert limits.json_depth(b'{"a": ["[[[{", {"b": "\\"]"}]}') == 3


def test_deep_or_huge_json_is_refused_and_digits_are_a_value_error() -> None:
    with pytest.raises(LimitExceeded, match="nesting"):
        limits.parse_json(b"[" * 100_000 + b"]" * 100_000, "the manifest")
    with pytest.raises(LimitExceeded, match="PYOPS_LIMIT_JSON_BYTES"):
        limits.parse_json(b" " * (limits.JSON_BYTES.default + 1), "the manifest")
    with pytest.raises(ValueError):
        limits.parse_json(b"1" * 5000, "the manifest")
    assert limits.parse_json(b'{"a": [[1]]}', "x") == {"a": [[1]]}


def test_the_readme_lists_every_limit_with_its_default() -> None:
    text = README.read_text()
    section = text.split("## Limits", 1)[1].split("\n## ", 1)[0]
    for limit in limits.ALL:
        row = re.search(rf"^\|[^\n]*`{limit.variable}`[^\n]*$", section, re.M)
        assert row is not None, f"README's Limits section lacks {limit.variable}"
        assert f"{limit.default:,}" in row.group(0) or _human(limit.default) in row.group(0)


def _human(value: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size} {unit}"
    return str(value)
