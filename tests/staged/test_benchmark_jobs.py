"""benchmarks/staged_pipeline.py's run launcher (``_run_jobs``): a benchmark that is killed stops
the pipeline runs it started, so none goes on writing into a run folder that a later ``--reuse``
reads. A real parent process and a real child, no training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "staged_pipeline.py"


def test_sigterm_stops_the_runs_the_benchmark_started(tmp_path):
    pidfile = tmp_path / "child.pid"
    child = f"import os, pathlib, time; pathlib.Path({str(pidfile)!r}).write_text(str(os.getpid())); time.sleep(120)"
    parent = "\n".join([
        "import importlib.util, pathlib, sys",
        f"spec = importlib.util.spec_from_file_location('staged_pipeline', {str(SCRIPT)!r})",
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)",
        "m._exit_on_sigterm()",
        f"m._run_jobs([('run', [sys.executable, '-c', {child!r}])], 1, pathlib.Path({str(tmp_path)!r}))",
    ])
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.monotonic() + 60
    while not (pidfile.is_file() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pidfile.is_file(), "the child run never started"
    pid = int(pidfile.read_text())
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "stopped run (unfinished)" in out
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    if alive:  # leave no sleeper behind, whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the run the benchmark started outlived it"
