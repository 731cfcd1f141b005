"""Notes on what goes wrong on Nanos (pyops.ops.advice), from command lines, configuration
files as Debian ships them, consoles and logs."""

from __future__ import annotations

from collections.abc import Callable

from pyops.ops.advice import Run, after_run, before_boot, missing_files, program_output

# Lines of Debian bookworm's /etc/redis/redis.conf that matter here.
DEBIAN_REDIS_CONF = """\
# By default Redis does not run as a daemon. Use 'yes' if you need it.
bind 127.0.0.1 -::1
protected-mode yes
port 6379
daemonize yes
logfile /var/log/redis/redis-server.log
"""

DEBIAN_NGINX_CONF = """\
user www-data;
worker_processes auto;
pid /run/nginx.pid;
events { worker_connections 768; }
http { include /etc/nginx/mime.types; }
"""


def reader(table: dict[str, str]) -> Callable[[str], bytes | None]:
    return lambda path: table[path].encode() if path in table else None


def test_redis_with_debian_config_names_daemonize() -> None:
    read = reader({"/etc/redis/redis.conf": DEBIAN_REDIS_CONF})
    notes = before_boot(["/usr/bin/redis-server", "/etc/redis/redis.conf"], read)
    texts = [n.text for n in notes]
    assert any("'daemonize yes'" in t and "no fork" in t for t in texts)
    assert any(n.fix == "add -a --daemonize -a no" for n in notes)
    assert any("listens on 127.0.0.1" in t for t in texts)
    # Fixed on the command line: no more notes on those.
    argv = ["/usr/bin/redis-server", "/etc/redis/redis.conf", "--daemonize", "no", "--bind",
            "0.0.0.0", "--protected-mode", "no"]  # fmt: skip
    assert before_boot(argv, read) == []


def test_redis_protected_mode_names_the_wrapper() -> None:
    read = reader({})
    (note,) = before_boot(["redis-server"], read, ["docker-entrypoint.sh"])
    assert "protected mode" in note.text and "docker-entrypoint.sh" in note.text
    assert note.fix.startswith("add -a --protected-mode -a no")
    assert before_boot(["redis-server", "--protected-mode", "no"], read) == []


def test_nginx_daemon_then_master_process() -> None:
    read = reader({"/etc/nginx/nginx.conf": DEBIAN_NGINX_CONF})
    (note,) = before_boot(["/usr/sbin/nginx"], read)
    assert "daemon" in note.text and "-g -a 'daemon off; master_process off;'" in note.fix
    (note,) = before_boot(["/usr/sbin/nginx", "-g", "daemon off;"], read)
    assert "master process" in note.text and "FIOASYNC" in note.text
    ok = ["/usr/sbin/nginx", "-g", "daemon off; master_process off;"]
    assert before_boot(ok, read) == []
    # In the file, comments do not count.
    conf = DEBIAN_NGINX_CONF + "daemon off;\n# master_process off;\nmaster_process  off ;\n"
    assert before_boot(["nginx"], reader({"/etc/nginx/nginx.conf": conf})) == []
    commented = DEBIAN_NGINX_CONF + "# daemon off;\n"
    assert before_boot(["nginx"], reader({"/etc/nginx/nginx.conf": commented}))


CONSOLE = """\
[0.600598] en1: assigned 10.0.2.15
nginx: [emerg] open() "/etc/nginx/nginx.conf" failed (2: No such file or directory)
missing_files_begin
nginx.conf
html
missing_files_end
"""


def test_console_parts() -> None:
    assert missing_files(CONSOLE) == ["nginx.conf", "html"]
    assert missing_files("[0.1] en1: assigned\nhello\n") is None
    assert program_output(CONSOLE) == (
        'nginx: [emerg] open() "/etc/nginx/nginx.conf" failed (2: No such file or directory)'
    )


def test_after_a_quick_silent_exit() -> None:
    read = reader({"/etc/redis/redis.conf": DEBIAN_REDIS_CONF})
    run = Run(
        ("/usr/bin/redis-server", "/etc/redis/redis.conf"),
        0,
        1.4,
        "[0.5] en1: assigned 10.0.2.15\n",
        {"/var/log/redis/redis-server.log": "1:C 01 Dec 2026 * Redis is starting"},
    )
    notes = after_run(run, read)
    texts = [n.text for n in notes]
    assert texts[0] == "redis-server exited with status 0 after 1.4 s and printed nothing."
    assert notes[0].fix == ""  # the notes after it say why
    assert any("'daemonize yes'" in t for t in texts)
    assert any(t.startswith("/var/log/redis/redis-server.log in the image says:") for t in texts)
    # With no known cause, the way to find one.
    (quiet,) = after_run(Run(("/app",), 0, 0.5, ""), read)
    assert "--missing-files" in quiet.fix and "pyops pkg probe" in quiet.fix
    # A program that printed and ran long is not explained.
    busy = Run(("/usr/bin/redis-server",), 0, 30.0, "Ready to accept connections\n")
    assert after_run(busy, read) == []


def test_after_an_interrupted_hang_with_fork_in_the_log() -> None:
    run = Run(
        ("/usr/sbin/nginx", "-g", "daemon off;"),
        None,
        20.0,
        "[0.5] en1: assigned 10.0.2.15\n",
        {"/var/log/nginx/error.log": 'ioctl(FIOASYNC) failed while spawning "worker process"'},
    )
    notes = after_run(run, reader({}))
    texts = [n.text for n in notes]
    assert texts[0].startswith("nginx tried to start another process, and Nanos has no fork")
    assert "nginx was stopped after 20.0 s and printed nothing." in texts
    assert any("master process" in t for t in texts)
    assert any("FIOASYNC" in t and "error.log" in t for t in texts)


def test_missing_files_report_is_a_note() -> None:
    run = Run(("/usr/sbin/nginx",), 1, 9.0, CONSOLE)
    notes = after_run(run, reader({}))
    assert notes[-1].text == "nginx tried to open files the image does not have: nginx.conf, html."
    assert "pyops pkg probe" in notes[-1].fix
