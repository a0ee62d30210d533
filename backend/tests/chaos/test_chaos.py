"""`make test`'s chaos run: 30 s of combined faults on two instances, every invariant held.

The run is a process of its own (`python -m tests.chaos`), as `make chaos` runs it; it stops
everything it started. Should it overrun its bound it is sent SIGTERM (it cleans up), then
SIGKILL, and the PostgreSQL server it left is stopped here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.postgres import EmbeddedPostgres
from tests.chaos.proxy import COGNITO_FAULTS
from tests.chaos.run import FAULT_KINDS
from tests.support.database import REPO_ROOT

SECONDS = 30
# Set-up, the faults' own tail (an instance restarting), 60 s to converge, and the checks.
BOUND_SECONDS = SECONDS + 240


def _run_chaos(report: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "backend"), "CHAOS_SECONDS": str(SECONDS)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.chaos", "--report", str(report)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=BOUND_SECONDS)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            _stop_leftover_postgres(output)
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def _stop_leftover_postgres(output: str) -> None:
    found = re.search(r"chaos: working in (\S+)", output)
    if found is not None:
        EmbeddedPostgres(Path(found.group(1)) / "pg").stop()


@pytest.mark.long
def test_a_chaos_run_holds_every_invariant_and_fires_every_fault(tmp_path: Path) -> None:
    report = tmp_path / "chaos.json"
    result = _run_chaos(report)
    assert result.returncode == 0, result.stdout[-12000:]
    summary = json.loads(report.read_text())
    assert all(summary["faults"].get(kind, 0) >= 1 for kind in FAULT_KINDS), summary["faults"]
    assert all(summary["cognito_calls_faulted"].get(kind, 0) >= 1 for kind in COGNITO_FAULTS), (
        summary["cognito_calls_faulted"]
    )
    assert summary["converged_seconds"] is not None
    assert set(summary["violations"].values()) == {0}, summary["violations"]
