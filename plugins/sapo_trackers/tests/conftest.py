"""The shared helpers (tracked.py) as an importable module, and a fixture that runs them in a fresh process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tests run with --import-mode=importlib, so the helper module is loaded by path, once.
if "sapo_trackers_tracked" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("sapo_trackers_tracked", Path(__file__).with_name("tracked.py"))
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _module
    _spec.loader.exec_module(_module)


@pytest.fixture
def drive_in_process():
    """``drive_in_process(workdir, nodes, report_to, env={...})``: the hooks over `ROUNDS` in a new
    Python process, for each node in turn; returns its stderr (the warnings). A None in ``env``
    removes that variable."""

    def run(
        workdir: Path,
        nodes: list[str],
        report_to: list[str],
        *,
        experiment: str = "exp",
        env: dict[str, str | None] | None = None,
    ) -> str:
        spec = {"workdir": str(workdir), "experiment": experiment, "nodes": nodes, "report_to": report_to}
        environ = {**os.environ, **(env or {})}
        environ = {name: value for name, value in environ.items() if value is not None}
        done = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("tracked.py")), json.dumps(spec)],
            env=environ,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stderr

    return run
