"""Why a program does not do on Nanos what it does in a container, and what to change.

Nanos runs one process: there is no ``fork``. Servers that daemonize (``redis-server`` with
``daemonize yes``, nginx by default) or start worker processes (nginx's master process) stop
or hang, usually printing nothing. And an image's entrypoint is often a shell script that
Nanos cannot run, whose settings are lost when the program runs directly (the official redis
image passes ``--protected-mode no``). This module is the one place that knows such things:

- :func:`before_boot` reads the program's command line and its configuration files in the
  image, and says what will go wrong and the fix;
- :func:`after_run` reads what a run left: its exit, how long it took, the console (Nanos's
  ``missing_files`` report among it) and the log files the program wrote in the image.

A note is a :class:`Note`: what happened, and the change that fixes it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Note",
    "Run",
    "after_run",
    "before_boot",
    "missing_files",
    "program_output",
    "wants_logs",
    "wrapper_note",
]

Reader = Callable[[str], "bytes | None"]
"""Reads a small file of the image by its in-image path (None: there is none)."""

QUICK_EXIT_SECONDS = 5.0
"""A program that ends this soon, printing nothing, gets explained."""

# Nanos's own messages carry a timestamp, but for the fate of a signal (src/unix/signal.c).
_KERNEL_LINE = re.compile(r"^(\[\s*\d+\.\d+\]\s|   (terminate|core dump|stop)$)")
_MISSING_BEGIN = "missing_files_begin"
_MISSING_END = "missing_files_end"


@dataclass(frozen=True, slots=True)
class Note:
    """Something the user should know about a run, and what to change."""

    text: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class Run:
    """What one boot left behind."""

    argv: tuple[str, ...]
    code: int | None
    """The program's exit code; None when the run was interrupted."""
    seconds: float
    console: str
    logs: Mapping[str, str] = field(default_factory=dict)
    """Log files the run wrote in the image (path: their last lines)."""
    entrypoint: tuple[str, ...] = ()
    """The image's entrypoint, for a package."""


def program_output(console: str) -> str:
    """The console without Nanos's own messages and its ``missing_files`` report."""
    lines: list[str] = []
    inside = False
    for line in console.splitlines():
        if line == _MISSING_BEGIN:
            inside = True
        elif line == _MISSING_END:
            inside = False
        elif not inside and not _KERNEL_LINE.match(line):
            lines.append(line)
    return "\n".join(lines).strip()


def missing_files(console: str) -> list[str] | None:
    """The names in Nanos's ``missing_files`` report (file names only: Nanos keeps the last
    component of each path), None when the console has no report."""
    names: list[str] | None = None
    for line in console.splitlines():
        if line == _MISSING_BEGIN:
            names = []
        elif line == _MISSING_END:
            return names
        elif names is not None and line and not _KERNEL_LINE.match(line):
            names.append(line.strip())
    return names


def _name(argv: Sequence[str]) -> str:
    return argv[0].rsplit("/", 1)[-1] if argv else ""


def _text(read: Reader, path: str) -> str | None:
    data = read(path)
    return data.decode("utf-8", "replace") if data is not None else None


def _directives(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


# ---------------------------------------------------------------------------------------
# Before the boot


def before_boot(argv: Sequence[str], read: Reader, entrypoint: Sequence[str] = ()) -> list[Note]:
    """What will go wrong with ``argv`` on Nanos, from the program's configuration in the
    image; ``entrypoint`` is the image's, when the program was packaged from one."""
    name = _name(argv)
    if name.startswith("redis-server"):
        return _redis(argv, read, entrypoint)
    if name == "nginx":
        return _nginx(argv, read)
    return []


def _option(args: Sequence[str], option: str) -> str | None:
    """The value of the last ``--option VALUE`` in ``args``."""
    value = None
    for i, arg in enumerate(args[:-1]):
        if arg == option:
            value = args[i + 1]
    return value


def _redis(argv: Sequence[str], read: Reader, entrypoint: Sequence[str]) -> list[Note]:
    args = list(argv[1:])
    conf_path = args[0] if args and not args[0].startswith("-") else None
    conf = _directives(_text(read, conf_path) or "") if conf_path else ""

    def setting(key: str) -> str | None:
        flag = _option(args, f"--{key}")
        if flag is not None:
            return flag.lower()
        found = re.findall(rf"^\s*{key}\s+(\S+)", conf, re.MULTILINE | re.IGNORECASE)
        return found[-1].lower() if found else None

    notes: list[Note] = []
    if setting("daemonize") == "yes":
        notes.append(
            Note(
                f"{conf_path} sets 'daemonize yes': redis forks to run in the background, "
                "and Nanos has no fork (it runs one process), so redis exits at once, "
                "printing nothing.",
                fix="add -a --daemonize -a no",
            )
        )
    bind = setting("bind")
    if bind is not None and bind.startswith("127."):
        notes.append(
            Note(
                f"redis listens on {bind} only ({conf_path or 'its arguments'}): "
                "forwarded ports (-p) cannot reach it.",
                fix="add -a --bind -a 0.0.0.0",
            )
        )
    if setting("protected-mode") not in ("no",) and setting("requirepass") is None:
        wrapper = ""
        if entrypoint and _name(entrypoint) != _name(argv):
            wrapper = (
                f" The image's entrypoint ({shlex.join(entrypoint)}) does not run on Nanos; "
                "the official redis image's passes --protected-mode no."
            )
        notes.append(
            Note(
                "redis runs in protected mode: with no password set, clients that do not "
                "come from the guest itself (all of them, through -p) get '-DENIED'." + wrapper,
                fix="add -a --protected-mode -a no, or set a password (-a --requirepass -a PW)",
            )
        )
    return notes


def _nginx(argv: Sequence[str], read: Reader) -> list[Note]:
    args = list(argv[1:])
    globals_ = " ".join(args[i + 1] for i, a in enumerate(args[:-1]) if a == "-g")
    conf_path = _option(args, "-c") or "/etc/nginx/nginx.conf"
    if not conf_path.startswith("/"):
        prefix = _option(args, "-p") or "/usr/share/nginx/"
        conf_path = prefix.rstrip("/") + "/" + conf_path
    text = _directives(_text(read, conf_path) or "") + "\n" + globals_

    def off(directive: str) -> bool:
        found = re.findall(rf"(?:^|[;\s]){directive}\s+(\w+)\s*;", text, re.MULTILINE)
        return bool(found) and found[-1] == "off"

    fix = "add -a -g -a 'daemon off; master_process off;'"
    if not off("daemon"):
        return [
            Note(
                "nginx runs as a daemon unless told otherwise: it forks to the background, "
                "and Nanos has no fork (it runs one process), so nginx stops at once.",
                fix=fix,
            )
        ]
    if not off("master_process"):
        return [
            Note(
                "nginx's master process starts its workers with fork, which Nanos does not "
                "have: nginx hangs without serving (its error log says "
                "'ioctl(FIOASYNC) failed (38: Function not implemented)').",
                fix=fix,
            )
        ]
    return []


def wrapper_note(entrypoint: Sequence[str], program: str) -> Note:
    """The image's entrypoint is a script that the package does not run."""
    return Note(
        f"the image's entrypoint {entrypoint[0]} is a script, which Nanos cannot run: the "
        f"package runs {program} directly, so what the script does first (settings, "
        "arguments, users, files) is not done.",
        fix="read the script (pyops pull IMAGE --extract DIR) and pass what it adds with -a",
    )


# ---------------------------------------------------------------------------------------
# After the run


_NO_FORK = (
    "fork: Function not implemented",
    "fork() failed",
    "ioctl(FIOASYNC) failed",
)


def wants_logs(code: int | None, seconds: float, console: str) -> bool:
    """Whether :func:`after_run` shows the program's logs for such a run (reading them
    means reading the image, so it is done only then)."""
    quiet = not program_output(console) and (code is None or seconds < QUICK_EXIT_SECONDS)
    return quiet or bool(code)


def after_run(run: Run, read: Reader) -> list[Note]:
    """What the run's exit, console and logs say went wrong (empty when nothing did)."""
    notes: list[Note] = []
    name = _name(run.argv)
    output = program_output(run.console)
    everything = "\n".join([run.console, *run.logs.values()])
    if any(sign in everything for sign in _NO_FORK):
        notes.append(
            Note(
                f"{name} tried to start another process, and Nanos has no fork (it runs one "
                "process).",
                fix="configure the program to stay in the foreground as one process "
                "(no daemon mode, no worker processes)",
            )
        )
    quiet = not output and (run.code is None or run.seconds < QUICK_EXIT_SECONDS)
    if quiet:
        how = (
            f"was stopped after {run.seconds:.1f} s"
            if run.code is None
            else f"exited with status {run.code} after {run.seconds:.1f} s"
        )
        causes = before_boot(run.argv, read, run.entrypoint)
        fix = (
            ""
            if causes or notes
            else "see which files it could not open with --missing-files, or let pyops "
            "add them (pyops pkg probe NAME)"
        )
        notes.append(Note(f"{name} {how} and printed nothing.", fix=fix))
        notes += causes
    for path, tail in run.logs.items():
        if quiet or run.code:
            notes.append(Note(f"{path} in the image says:\n{tail}"))
    names = missing_files(run.console)
    if names:
        notes.append(
            Note(
                f"{name} tried to open files the image does not have: {', '.join(names)}.",
                fix="add them (config.json Files or Dirs), or let pyops find them in the "
                "package's image (pyops pkg probe NAME)",
            )
        )
    return notes
