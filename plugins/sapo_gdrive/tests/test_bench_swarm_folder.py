"""bench/swarm_folder.py runs end to end at a tiny size, as a user runs it, so it does not rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench"


def test_swarm_folder_publishes_and_collects_every_size_of_every_variant(tmp_path):
    rows_file = tmp_path / "rows.jsonl"
    done = subprocess.run(
        [sys.executable, str(BENCH / "swarm_folder.py"), "--max-nodes", "8", "--repeat", "1", "--groups", "2"]
        + ["--completions", "2", "--tokens", "16", "--markdown", "--json", str(rows_file)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert sorted({(row["variant"], row["nodes"]) for row in rows}) == sorted(
        (variant, float(n)) for variant in ("local", "local+hmac", "memory") for n in (1, 2, 4, 8)
    )
    assert all(row["collect_s"] > 0 and row["bytes"] > 0 for row in rows)
    assert "| variant    | nodes | publish ms/node |" in done.stdout, "rich's Markdown table"
    for variant in ("local", "local+hmac", "memory"):
        assert f"{variant}: collect ~ N^" in done.stdout and "per-publisher cost at 8 nodes vs 1" in done.stdout
