"""The process that keeps one background virtual machine: ``python -m pyops.vm.supervise DIR``.

:mod:`pyops.ops.instances` starts it detached from the terminal (a session of its own, no
standard streams), with the instance folder ``DIR``. It reads the qemu command line from
``DIR/launch.json``, starts qemu with the console going to ``DIR/console.log`` and qemu's own
messages to ``DIR/qemu.err``, writes qemu's process id to ``DIR/qemu.pid``, waits, and
writes how the machine ended to ``DIR/exit.json``: the guest program's exit code, or why
there is none. Being qemu's parent is what lets it know the exit status, which no later
pyops command could learn. Both files are written whole (renamed into place) and carry the
run number of ``launch.json``, so a reader never takes an earlier run's for this one's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LAUNCH = "launch.json"
CONSOLE = "console.log"
QEMU_ERR = "qemu.err"
QEMU_PID = "qemu.pid"
EXIT = "exit.json"


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` to ``path`` whole: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def supervise(folder: Path) -> int:
    """Run the machine ``folder/launch.json`` describes until it stops; see the module doc."""
    from pyops.arch import Arch
    from pyops.errors import PyopsError
    from pyops.vm.qemu import interpret_exit

    launch = json.loads((folder / LAUNCH).read_text())
    run = launch["run"]
    argv = [str(a) for a in launch["argv"]]
    # Nothing the terminal does may stop it; a stop comes through QMP or a signal to qemu.
    for signum in (signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    with open(folder / CONSOLE, "ab") as console, open(folder / QEMU_ERR, "wb") as err:
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=console, stderr=err, close_fds=True
            )
        except OSError as exc:
            write_json(folder / EXIT, {"run": run, "error": f"cannot start {argv[0]}: {exc}"})
            return 1
        write_json(folder / QEMU_PID, {"run": run, "pid": proc.pid, "started": time.time()})
        status = proc.wait()
    ended: dict[str, Any] = {"run": run, "status": status, "ended": time.time()}
    stderr = (folder / QEMU_ERR).read_text(errors="replace")[-65536:]
    tail = _tail(folder / CONSOLE)
    try:
        ended["exit_code"] = interpret_exit(status, stderr, argv, Arch(launch["arch"]), tail)
    except PyopsError as exc:
        ended["error"] = str(exc)
    write_json(folder / EXIT, ended)
    return 0


def _tail(path: Path, size: int = 8192) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - size))
        return f.read().decode("utf-8", "replace")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m pyops.vm.supervise INSTANCE_FOLDER\n")
        return 2
    return supervise(Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
