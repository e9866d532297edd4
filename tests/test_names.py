"""One rule for node ids and experiment names, shared by the config and the payload codec."""

from __future__ import annotations

import pytest

from sapo_core import codec, names
from sapo_core.config import load_config
from sapo_core.errors import ConfigError, PayloadError

REFUSED = [
    "",
    "CON",
    "nul.x",
    "Com1.json",
    "node.",
    ".hidden",
    "-x",
    "a..b",
    "a/b",
    "a\\b",
    "tab\there",
    "café",
    "x" * 65,
]
ACCEPTED = ["node-0", "a", "Node_1.2", "x" * 64, "console", "nullable", "con-1"]


@pytest.mark.parametrize("value", REFUSED)
def test_the_config_refuses_every_node_id_the_codec_refuses(value):
    with pytest.raises(PayloadError):
        codec.validate_node_id(value)
    with pytest.raises(ConfigError, match="run.node_id"):
        load_config(sets=[f"run.node_id={value}"] if value else ["run.node_id="])
    with pytest.raises(ConfigError, match="run.experiment"):
        load_config(sets=[f"run.experiment={value}"] if value else ["run.experiment="])


@pytest.mark.parametrize("value", ACCEPTED)
def test_the_config_accepts_every_node_id_the_codec_accepts(value):
    assert codec.validate_node_id(value) == value
    assert load_config(sets=[f"run.node_id={value}"]).run.node_id == value
    assert names.id_problem(value) is None


def test_a_refused_name_says_why():
    assert names.id_problem("nul.txt") == "it is a reserved file name on Windows"
    assert names.id_problem("node.") == "it ends with '.' (Windows drops trailing dots from file names)"
    with pytest.raises(ConfigError, match="reserved file name on Windows"):
        load_config(sets=["run.node_id=CON"])


def test_backend_names():
    assert names.is_backend_name("rg:arc_1d") and names.is_backend_name("local") and names.is_backend_name("a.b-c")
    assert not any(map(names.is_backend_name, ["Local", "", "-x", "rg:", ":x", "a b", "x" * 65]))
