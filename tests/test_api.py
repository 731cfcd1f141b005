"""The public library API: what ``import pyops`` offers."""

from __future__ import annotations

import subprocess
import sys

import pyops


def test_every_public_name_resolves() -> None:
    assert pyops.__all__ == sorted(pyops.__all__, key=lambda n: (n.startswith("_"), n))
    for name in pyops.__all__:
        assert getattr(pyops, name) is not None, name
    assert issubclass(pyops.ReleaseError, pyops.PyopsError)


def test_import_is_light() -> None:
    """``import pyops`` loads no network or ELF library until they are used."""
    code = (
        "import sys, pyops; "
        "print(sorted(m for m in ('requests', 'elftools', 'click') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_attribute() -> None:
    try:
        pyops.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
