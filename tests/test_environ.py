"""The one parser of NAME=VALUE settings."""

from __future__ import annotations

import pytest

from pyops.environ import parse_env
from pyops.errors import InvalidInput


def test_split_at_the_first_equals_and_a_later_item_wins() -> None:
    assert parse_env(["A=1", "B=x=y", "A=2", "E="]) == {"A": "2", "B": "x=y", "E": ""}


def test_a_bare_name_takes_the_hosts_value_only_when_a_host_is_given() -> None:
    assert parse_env(["HOME"], host={"HOME": "/root"}) == {"HOME": "/root"}
    with pytest.raises(InvalidInput, match="-e NOPE: no value given"):
        parse_env(["NOPE"], host={})
    with pytest.raises(InvalidInput, match="invalid environment setting 'NOPE' in --env"):
        parse_env(["NOPE"], source="--env")


def test_an_image_config_is_read_leniently() -> None:
    assert parse_env(["=x", "NOEQ", "OK=1"], strict=False) == {"OK": "1"}
    with pytest.raises(InvalidInput, match="'=x'"):
        parse_env(["=x"])
