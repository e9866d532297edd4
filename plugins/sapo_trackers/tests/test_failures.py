"""A tracker that fails warns once, naming what to install when that is what is missing; the run goes on."""

from __future__ import annotations

import logging
import shutil
import sys

import pytest
from sapo_trackers_tracked import API_KEY, SECRET, context, drive

from sapo_core.building import warn_if_untracked
from sapo_core.config import load_config
from sapo_core.plugins import Plugins
from sapo_trackers.common import redacted

# Each tracker and the module its library is imported as.
LIBRARIES = {"tensorboard": "tensorboardX", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}


def tracker_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sapo.trackers" and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("tracker", sorted(LIBRARIES))
def test_a_missing_library_is_one_warning_with_the_pip_command(tracker, tmp_path, monkeypatch, caplog):
    library = LIBRARIES[tracker]
    # A None in sys.modules makes an import fail as for a module not installed; its submodules
    # too, as other tests have imported them already.
    for name in [library, *(name for name in sys.modules if name.startswith(library + "."))]:
        monkeypatch.setitem(sys.modules, name, None)
    with caplog.at_level(logging.INFO, logger="sapo.trackers"):
        drive(context(tmp_path, "worker-1", [tracker]))  # every hook returns: the run goes on
    (warning,) = tracker_warnings(caplog)
    assert f"names {tracker}, but {tracker} is not installed" in warning
    assert f"pip install 'sapo-trackers[{tracker}]'" in warning and "the run goes on" in warning


def test_an_unwritable_folder_is_one_warning_and_the_others_still_report(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # no folder can be made below it, even by root
    ctx = context(tmp_path, "worker-1", ["tensorboard", "mlflow"], run_dir=blocker / "run")
    with caplog.at_level(logging.WARNING, logger="sapo.trackers"):
        drive(ctx)
    (warning,) = tracker_warnings(caplog)
    assert "worker-1: tensorboard could not start" in warning and "the run goes on without it" in warning
    assert (tmp_path / "mlruns").is_dir(), "mlflow, in run.workdir, reported all the same"


def test_a_tracker_failing_mid_run_warns_once_and_is_dropped(tmp_path, monkeypatch, caplog):
    from sapo_trackers import plugin

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ctx = context(tmp_path, "worker-1", ["mlflow"])
    plugin.run_started(context=ctx)
    shutil.rmtree(tmp_path / "mlruns")
    (tmp_path / "mlruns").write_text("the disk is gone")
    with caplog.at_level(logging.WARNING, logger="sapo.trackers"):
        for round in range(3):
            plugin.round_finished(context=ctx, round=round, metrics={"reward/mean": 0.5})
        plugin.run_finished(context=ctx, metrics={})
    (warning,) = tracker_warnings(caplog)
    assert "worker-1: mlflow failed" in warning


def test_an_unknown_name_is_a_warning_with_the_choices(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="sapo.trackers"):
        drive(context(tmp_path, "worker-1", ["tensorbord"]))
    (warning,) = tracker_warnings(caplog)
    assert "no tracker 'tensorbord' (did you mean 'tensorboard'?)" in warning
    assert "tensorboard, wandb, trackio, mlflow" in warning


def test_only_the_main_process_of_a_distributed_learner_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    drive(context(tmp_path, "worker-1", ["tensorboard"]))
    assert not (tmp_path / "exp" / "worker-1").exists()


def test_without_sapo_trackers_loaded_the_core_says_what_to_install(monkeypatch, caplog):
    config = load_config(env={}, sets=['run.report_to=["tensorboard","mlflow"]'])
    monkeypatch.setenv("SAPO_DISABLE_PLUGINS", "sapo_trackers")
    without = Plugins()
    without.load()
    with caplog.at_level(logging.WARNING, logger="sapo.node"):
        warn_if_untracked(config, without)
    assert "pip install 'sapo-trackers[tensorboard,mlflow]'" in caplog.text
    monkeypatch.delenv("SAPO_DISABLE_PLUGINS")
    caplog.clear()
    loaded = Plugins()
    loaded.load()
    warn_if_untracked(config, loaded)
    assert "sapo-trackers" not in caplog.text


def test_the_config_a_tracker_sees_has_no_secret(tmp_path):
    shown = redacted(context(tmp_path, "worker-1", ["wandb"]).config.to_dict(redact=False))
    assert shown["swarm"]["secret"] == "***" and shown["inference"]["api_key"] == "***"
    assert shown["inference"]["max_new_tokens"] > 0  # a core key named like a token is not a secret
    assert SECRET not in str(shown) and API_KEY not in str(shown)
