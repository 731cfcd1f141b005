"""A client of qemu's machine protocol (QMP) on a Unix socket: enough to power a guest off,
ask whether it runs, and hot-plug drives.

QMP is line-delimited JSON (qemu ``docs/interop/qmp-spec``): the server greets with
``{"QMP": ...}``, the client sends ``qmp_capabilities``, then each ``{"execute": ...}`` gets
a ``{"return": ...}`` or ``{"error": ...}``, with asynchronous ``{"event": ...}`` lines in
between. Replies are read with a bound on their size and a timeout: a socket left by
something else must not hang or flood pyops.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
from types import TracebackType
from typing import Any

from pyops.errors import QemuError

_MAX_LINE = 1 << 20
"""The longest reply line read (query-* answers are a few KiB)."""


class QmpError(QemuError):
    """qemu refused a command, or the socket does not speak QMP."""


class Qmp:
    """One QMP connection (a context manager); every call raises :class:`QmpError` or
    ``OSError`` (the socket is gone)."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 5.0) -> None:
        self.path = os.fspath(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._buffer = b""
        try:
            self._sock.connect(self.path)
            greeting = self._read()
            if "QMP" not in greeting:
                raise QmpError(f"{self.path} is not a QMP socket (its greeting: {greeting!r:.80})")
            self.execute("qmp_capabilities")
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> Qmp:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def peer_pid(self) -> int | None:
        """The process id at the other end of the socket, where the system says (Linux
        ``SO_PEERCRED``, macOS ``LOCAL_PEERPID``)."""
        try:
            if sys.platform.startswith("linux"):
                creds = self._sock.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
                )
                return int(struct.unpack("3i", creds)[0])
            if sys.platform == "darwin":
                local_peerpid = 0x002  # sys/un.h, at level SOL_LOCAL (0)
                raw = self._sock.getsockopt(0, local_peerpid, struct.calcsize("i"))
                return int(struct.unpack("i", raw)[0])
        except OSError:
            return None
        return None

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run ``command`` and return its ``return`` value."""
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self._sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                error = reply["error"]
                text = error.get("desc", error) if isinstance(error, dict) else error
                raise QmpError(f"qemu refused {command}: {text}")
            if "return" in reply:
                return reply["return"]
            raise QmpError(f"unexpected QMP reply to {command}: {reply!r:.80}")

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            if len(self._buffer) > _MAX_LINE:
                raise QmpError(f"{self.path}: a QMP reply longer than {_MAX_LINE} bytes")
            chunk = self._sock.recv(65536)
            if not chunk:
                raise QmpError(f"{self.path}: qemu closed the QMP connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise QmpError(f"{self.path}: not QMP ({exc})") from None
        if not isinstance(value, dict):
            raise QmpError(f"{self.path}: not QMP (a reply that is not an object)")
        return value
