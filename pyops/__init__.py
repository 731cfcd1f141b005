"""pyops: build and boot Nanos unikernel images from Linux programs and OCI images."""

from __future__ import annotations

__version__ = "0.1.0"

from pyops.errors import PyopsError

__all__ = ["PyopsError", "__version__"]
