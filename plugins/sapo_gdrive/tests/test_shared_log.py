"""The shared log (logs/<node>.log, read by every member of the swarm) never holds a registered secret."""

from __future__ import annotations

import logging

from sapo_core import redaction
from sapo_core.interfaces import BackendContext
from sapo_core.testing import config_of
from sapo_gdrive import observers

CANARY = "sk-canary-in-the-shared-log-7"


def test_a_key_logged_by_any_code_path_is_redacted_in_the_shared_log(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    redaction.install()  # what `sapo` does first: environment secrets are registered
    context = BackendContext(
        node="w1",
        experiment="exp",
        config=config_of({"swarm": {"transport": "gdrive", "root": str(tmp_path), "secret": "swarm-s3cret"}}),
    )
    observers.run_started(context=context)
    try:
        logging.getLogger("sapo.openai").warning("a request failed (502: <html>Bearer %s</html>)", CANARY)
        logging.getLogger("sapo.node").warning("swarm secret swarm-s3cret in a message")
    finally:
        observers.run_finished(context=context, metrics={})
    text = (tmp_path / "exp/logs/w1.log").read_text()
    assert "a request failed (502: <html>Bearer <redacted></html>)" in text
    assert CANARY not in text and "swarm-s3cret" not in text
