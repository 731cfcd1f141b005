"""Environment settings written as ``NAME=VALUE``: the one parser for ``-e`` flags, ``ldd
--env`` and an image config's ``Env``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pyops.errors import InvalidInput


def parse_env(
    items: Iterable[str],
    *,
    source: str = "-e",
    host: Mapping[str, str] | None = None,
    strict: bool = True,
) -> dict[str, str]:
    """``NAME=VALUE`` items as a map, split at the first ``=``; a later item wins.

    A bare ``NAME`` takes its value from ``host`` when one is given (``-e NAME`` passes the
    host's value, as Docker does). Anything else that is not ``NAME=VALUE`` is an
    :class:`InvalidInput` naming ``source``, or, with ``strict=False`` (an image's config,
    which Docker reads the same way), left out.
    """
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if name and not sep and host is not None:
            if name not in host:
                raise InvalidInput(
                    f"{source} {name}: no value given and {name} is not set here",
                    hint=f"write {source} {name}=VALUE",
                )
            value = host[name]
        elif not name or not sep:
            if not strict:
                continue
            raise InvalidInput(
                f"invalid environment setting {item!r} in {source}",
                hint=f"write {source} NAME=VALUE",
            )
        env[name] = value
    return env
