"""docs/colab_swarm.ipynb: stored clean, and it runs top to bottom outside Colab with a real kernel.

The notebook runs in a real Jupyter kernel (ipykernel, started by nbclient) of this Python, on a
temporary folder standing in for Google Drive, with its settings shrunk through sapo's environment
variables: it starts a coordinator and a worker on the bundled model, watches them, and draws the
report. A second execution on the same folder, with a new local folder (a fresh Colab runtime),
resumes the worker from its checkpoint in the shared folder and plays one more round.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "colab_swarm.ipynb"
KERNEL = "sapo-notebook-test"
SECRET = "notebook-test-secret"
EXPERIMENT = "nb-swarm"
NODE = "nb-worker"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_the_notebook_is_valid_and_stored_without_outputs() -> None:
    notebook = read_notebook()
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "a notebook without code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"stored outputs in:\n{cell.source[:200]}"
    assert "widgets" not in notebook.metadata
    text = "\n".join(cell.source for cell in notebook.cells)
    for needle in (
        'drive.mount("/content/drive")',
        "google.colab",
        "#subdirectory=plugins/sapo_gdrive",
        "GDRIVE_PATH",
        "EXPERIMENT_NAME",
        "SAPO_SWARM_SECRET",
        "contributor",
        "coordinator",
        "--resume",
        "checkpoint.backend=gdrive",
        "sapo swarm status",
        "sapo report",
    ):
        assert needle in text, f"the notebook does not mention {needle}"


def outputs_text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.extend(str(value) for key, value in output.get("data", {}).items() if key.startswith("text/"))
            parts.extend(output.get("traceback", []))
    return "\n".join(parts)


def execute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workdir: Path, rounds: int):
    """Run the notebook top to bottom in a fresh kernel; the executed notebook."""
    for name, value in {
        "GDRIVE_PATH": str(tmp_path / "drive"),
        "SAPO_RUN_WORKDIR": str(workdir),
        "EXPERIMENT_NAME": EXPERIMENT,
        "NODE_ID": NODE,
        "SAPO_SWARM_SECRET": SECRET,
        # Two cores: two problems, four completions of 24 tokens, a small held-out set.
        "SAPO_RUN_ROUNDS": str(rounds),
        "SAPO_TASKS_PROBLEMS_PER_ROUND": "2",
        "SAPO_INFERENCE_NUM_COMPLETIONS": "4",
        "SAPO_INFERENCE_MAX_NEW_TOKENS": "24",
        "SAPO_SWARM_ROUND_SECONDS": "600",
        "SAPO_SWARM_POLL_SECONDS": "0.2",
        "SAPO_CHECKPOINT_EVERY": "1",
        "SAPO_EVAL_EVERY": "2",
        "SAPO_EVAL_PROBLEMS": "2",
    }.items():
        monkeypatch.setenv(name, value)
    notebook = read_notebook()
    client = nbclient.NotebookClient(
        notebook, kernel_name=KERNEL, timeout=900, resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"a cell failed:\n{exc}\n\nall output:\n{outputs_text(notebook)}")
    if os.environ.get("SAPO_KEEP_NOTEBOOK"):  # to look at the executed notebook: a folder to write it into
        nbformat.write(notebook, Path(os.environ["SAPO_KEEP_NOTEBOOK"]) / f"colab_swarm-{workdir.name}.ipynb")
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, outputs_text(notebook)
    return notebook


def stop_nodes_under(root: Path) -> None:
    """End the nodes a failed execution left running on ``root`` (the notebook starts them in their own session)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"sapo_core" in args and str(root).encode() in args:
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGTERM)


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A kernelspec for this very Python (the venv's), found first; Jupyter's files under tmp_path."""
    kernelspec.write_kernel_spec(tmp_path / "jupyter" / "kernels" / KERNEL)
    spec = json.loads((tmp_path / "jupyter" / "kernels" / KERNEL / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.delenv("SAPO_CONFIG", raising=False)
    monkeypatch.delenv("SAPO_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("SAPO_DISABLE_PLUGINS", raising=False)
    yield
    stop_nodes_under(tmp_path / "drive")


def metric_rounds(folder: Path) -> list[int]:
    return [json.loads(line)["round"] for line in (folder / "metrics" / f"{NODE}.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_notebook_runs_a_swarm_outside_colab_and_resumes(tmp_path: Path, monkeypatch, kernel) -> None:
    folder = tmp_path / "drive" / EXPERIMENT
    first = execute(tmp_path, monkeypatch, tmp_path / "runtime-1", rounds=2)
    text = outputs_text(first)
    assert "in Colab: False" in text and "payloads are signed" in text
    assert f"started the coordinator {NODE}-coordinator" in text and f"started the worker {NODE}" in text
    assert f"{NODE} round 2/2: reward" in text, "the worker's round lines were shown"
    assert SECRET not in text

    # The shared folder holds the swarm: state, heartbeats, signed payloads, metrics, logs, checkpoints.
    assert json.loads((folder / "state.json").read_text())["round"] == 2
    assert {p.name for p in (folder / "nodes").iterdir()} == {f"{NODE}.json", f"{NODE}-coordinator.json"}
    for round in (0, 1):
        payload = json.loads(gzip.decompress((folder / "rounds" / str(round) / f"{NODE}.json.gz").read_bytes()))
        assert payload["node"] == NODE and payload["round"] == round and payload["groups"]
        assert payload.get("signature"), "a swarm with a secret signs its payloads"
    assert metric_rounds(folder) == [0, 1]
    assert "eval/pass@1" in json.loads((folder / "metrics" / f"{NODE}.jsonl").read_text().splitlines()[-1])
    assert (folder / "logs" / f"{NODE}.log").stat().st_size > 0
    assert (folder / "checkpoints" / NODE / "round-000001" / "checkpoint.json").is_file()
    assert SECRET not in (folder / "logs" / f"{NODE}.log").read_text()

    # `sapo swarm status` and the report, shown inline.
    assert "round 2" in text and "valid" in text
    png = tmp_path / "runtime-1" / f"{EXPERIMENT}-reward.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    images = [o for c in first.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1

    # A fresh runtime: a new local folder, the same shared one, one more round.
    second = execute(tmp_path, monkeypatch, tmp_path / "runtime-2", rounds=3)
    text = outputs_text(second)
    assert f"started the coordinator {NODE}-coordinator" in text, "the finished coordinator does not count as running"
    assert "resumed from the checkpoint of round 1" in text
    assert f"{NODE} round 3/3: reward" in text and f"{NODE} round 1/3" not in text
    assert metric_rounds(folder) == [0, 1, 2]
    assert json.loads((folder / "state.json").read_text())["round"] == 3
    assert (folder / "checkpoints" / NODE / "round-000002" / "checkpoint.json").is_file()
    assert (tmp_path / "runtime-2" / f"{EXPERIMENT}-reward.png").read_bytes()[:8] == PNG_MAGIC
