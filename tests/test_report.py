"""`sapo report`: reward curves of runs, as a PNG and a table."""

from __future__ import annotations

import json


def write_run(folder, lines):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"round": 9, "rew')


def test_report_draws_every_run_of_a_folder(sapo_cli, tmp_path):
    write_run(
        tmp_path / "exp" / "20261125-100000",
        [
            {"round": -1, "eval/pass@1": 0.1},
            {"round": 0, "reward/mean": 0.2},
            {"round": 1, "reward/mean": 0.5, "eval/pass@1": 0.4},
        ],
    )
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


def test_the_table_counts_rounds_from_1_and_names_the_evaluation_before_training(sapo_cli, tmp_path):
    write_run(
        tmp_path / "run",
        [
            {"round": -1, "eval/pass@1": 0.1},
            {"round": 0, "reward/mean": 0.2},
            {"round": 1, "reward/mean": 0.5, "eval/pass@1": 0.4},
        ],
    )
    result = sapo_cli("report", str(tmp_path / "run"), "-o", str(tmp_path / "r.png"))
    rows = [line.split() for line in result.output.splitlines()]
    assert ["before", "training", "0.100"] in rows and ["1", "0.200"] in rows and ["2", "0.500", "0.400"] in rows


def curves_of_a_swarm():
    from sapo_core import report

    # Three workers with equal values at most rounds: the picture must still show each one.
    nodes = [
        report.Curve(f"worker-{i}", (0, 1, 2, 3), reward, (-1, 3), (0.167, after))
        for i, (reward, after) in enumerate(
            [((0.083, 0, 0, 0.083), 0.0), ((0, 0.083, 0, 0.083), 0.083), ((0.083, 0.083, 0.083, 0), 0.083)], start=1
        )
    ]
    return [*nodes, report.swarm_mean(nodes)]


def test_the_picture_draws_evaluations_as_markers_only_and_keeps_every_worker_in_sight():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sapo_core import report

    figure = report.figure_of(curves_of_a_swarm(), "t")
    try:
        rewards, passes = figure.axes[:2]
        assert passes.get_lines() == [], "pass@1 is measured at evaluations only: no line joins them"
        points = [collection.get_offsets() for collection in passes.collections]
        assert len(points) == 4  # three workers and the swarm mean
        # Before training all three have pass@1 0.167: side by side, not on top of each other.
        assert len({round(float(x), 6) for x, _ in (p[0] for p in points[:3])}) == 3
        assert all(abs(float(p[0][0])) < 0.5 for p in points), "near round 0 (before training) nonetheless"
        assert sorted(round(float(x)) for x, _ in points[3]) == [0, 4], "the swarm mean's bars sit on the rounds"
        lines = rewards.get_lines()
        assert (
            len({line.get_marker() for line in lines[:3]}) == 3
            and len({line.get_linestyle() for line in lines[:3]}) == 3
        )
        assert [tick.get_text() for tick in passes.get_xticklabels()] == ["before\ntraining", "1", "2", "3", "4"]
        assert [float(x) for x in lines[3].get_xdata()] == [1, 2, 3, 4], "rounds counted from 1"
    finally:
        plt.close(figure)
