"""The ``pyops`` command line: a thin click skin over the library, one module per command
group (``build`` for build and run, ``pkg``, ``image``, ``instance``, ``kernel``, ``pull``,
``ldd``, ``volume``)."""

# Importing each module registers its commands.
from pyops.cli import build, image, instance, kernel, ldd, nanos_tools, pkg, pull, volume  # noqa: F401
from pyops.cli._app import cli, main

__all__ = ["cli", "main"]
