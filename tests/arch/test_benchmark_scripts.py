"""Every script in benchmarks/ imports and builds its --help.

The scripts are not imported by the package or by other tests, so a renamed or removed name they
use would otherwise show only when somebody runs them (``learner_speed.py`` once imported a
private helper that a refactor had removed).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py"))


def test_there_are_scripts():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_imports_and_answers_help(path, monkeypatch):
    spec = importlib.util.spec_from_file_location(f"_bench_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # top-level imports run here
    assert callable(getattr(mod, "main", None)), f"{path.name} has no main()"
    monkeypatch.setattr("sys.argv", [str(path), "--help"])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as exc:
        mod.main()
    assert exc.value.code == 0
    assert "usage" in buf.getvalue()
