"""The ``pyops`` command line: a thin click skin over the library, one module per command
group (``build`` for build and run, ``pkg``, ``image``, ``kernel``, ``pull``, ``ldd``)."""

from pyops.cli import build, image, kernel, ldd, pkg, pull  # noqa: F401 - registers commands
from pyops.cli._app import cli, main

__all__ = ["cli", "main"]
