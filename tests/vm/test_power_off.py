"""The guest's power button and its console, on a real Nanos (boot tests skip without one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyops.ops.advice import missing_files, program_output
from pyops.ops.config import OpsConfig
from pyops.ops.images import fresh_run_copy
from pyops.ops.recipes import BuildFlags, build_program
from pyops.vm.qemu import Console, Host, VmConfig, run_vm

from ..conftest import compile_c, install_test_release

# Tries to open a file that is not there, says so, then serves forever: only the power
# button ends it, and only a shutdown prints Nanos's missing_files report.
FOREVER = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) {
    FILE *f = fopen("/etc/forever/forever.conf", "r");
    printf("config %s\n", f ? "found" : "missing");
    fflush(stdout);
    for (;;) pause();
}
"""


@pytest.mark.boot
def test_power_button_stops_a_server_and_nanos_reports_missing_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nanos_release: Path, cc: str
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("PYOPS_HOME", str(home))
    install_test_release(nanos_release, home)
    program = compile_c(cc, FOREVER, tmp_path / "forever")
    built = build_program(OpsConfig(), BuildFlags(program=str(program), missing_files=True))
    console = Console()
    out = tmp_path / "console"
    with open(out, "wb") as f:
        code = run_vm(
            fresh_run_copy(built.path),
            VmConfig(),
            host=Host.detect(),
            stdout=f.fileno(),
            console=console,
            power_off_after=20,
            timeout=120,
        )
    # Nanos ends the program with SIGTERM (its default action: exit 15, "   terminate").
    assert code == 15
    text = console.text()
    assert out.read_bytes().decode().replace("\r", "") == text  # the tee lost nothing
    assert program_output(text) == "config missing"
    assert missing_files(text) == ["forever.conf"]
