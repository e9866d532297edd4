"""`sapo report`: reward curves of runs, as a PNG and a table."""

from __future__ import annotations

import json


def write_run(folder, lines):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"round": 9, "rew')


def test_report_draws_every_run_of_a_folder(sapo_cli, tmp_path):
    write_run(tmp_path / "exp" / "20261125-100000", [
        {"round": -1, "eval/pass@1": 0.1},
        {"round": 0, "reward/mean": 0.2},
        {"round": 1, "reward/mean": 0.5, "eval/pass@1": 0.4},
    ])
    write_run(tmp_path / "exp" / "sweep-1" / "lr=1e-5", [{"round": 0, "reward/mean": 0.3}])
    out = tmp_path / "pics" / "reward.png"
    result = sapo_cli("report", str(tmp_path / "exp"), "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = json.loads(result.output)["runs"]
    assert runs["20261125-100000"] == [
        {"round": -1, "reward": None, "pass@1": 0.1},
        {"round": 0, "reward": 0.2, "pass@1": None},
        {"round": 1, "reward": 0.5, "pass@1": 0.4},
    ], "a partial last line (a crash mid-write) is skipped"
    assert runs["lr=1e-5"] == [{"round": 0, "reward": 0.3, "pass@1": None}]
    table = sapo_cli("report", str(tmp_path / "exp" / "20261125-100000"), "-o", str(out))
    assert "held-out pass@1" in table.output and "0.500" in table.output


def test_report_on_a_folder_without_runs_says_so(sapo_cli, tmp_path):
    result = sapo_cli("report", str(tmp_path), "-o", str(tmp_path / "x.png"))
    assert result.exit_code == 1 and "no metrics.jsonl" in result.output
