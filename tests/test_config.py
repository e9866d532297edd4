"""The resolved configuration: precedence and sources, every input form, errors, redaction, structure()."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from sapo_core.config import Config, Extras, is_secret, load_config, structure
from sapo_core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sapo.toml"
    path.write_text(text)
    return path


def error(**kwargs) -> str:
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    return str(info.value)


# ------------------------------------------------------------------------------ precedence


def test_defaults():
    config = load_config(env={})
    assert config == Config()
    assert config.inference.temperature == 0.7 and config.tasks.names == ("arithmetic",)
    assert config.rewards.weights == {"correctness": 1.0, "format": 0.1}
    assert config.source("run.rounds") == "default"
    assert config.node_dir == Path("runs") / "default" / "node-0"
    assert config.extras("inference") == {} and config.extras("tasks") == {}


@pytest.mark.parametrize(
    "layers, rounds, source",
    [
        ((), 10, "default"),
        (("file",), 2, "file {file}"),
        (("file", "env"), 3, "env SAPO_RUN_ROUNDS"),
        (("file", "env", "flag"), 4, "--rounds"),
        (("file", "env", "flag", "set"), 6, "--set"),
        (("env", "set"), 6, "--set"),
        (("file", "flag"), 4, "--rounds"),
    ],
)
def test_precedence_across_the_five_layers(tmp_path, layers, rounds, source):
    file = write(tmp_path, "[run]\nrounds = 2\nseed = 7\n")
    config = load_config(
        file=file if "file" in layers else None,
        env={"SAPO_RUN_ROUNDS": "3"} if "env" in layers else {},
        flags={"run.rounds": (4, "--rounds")} if "flag" in layers else None,
        sets=["run.rounds=5", "run.rounds=6"] if "set" in layers else (),  # the last --set wins
    )
    assert config.run.rounds == rounds
    assert config.source("run.rounds") == source.format(file=file)
    assert config.source("run.seed") == (f"file {file}" if "file" in layers else "default")


def test_sapo_config_names_the_file_and_an_explicit_file_wins(tmp_path):
    first = write(tmp_path, "[run]\nrounds = 2\n")
    second = tmp_path / "other.toml"
    second.write_text("[run]\nrounds = 3\n")
    assert load_config(env={"SAPO_CONFIG": str(first)}).run.rounds == 2
    assert load_config(file=second, env={"SAPO_CONFIG": str(first)}).run.rounds == 3


def test_string_flags_are_parsed_by_type_and_none_flags_are_skipped():
    config = load_config(
        env={},
        flags={
            "run.rounds": ("7", "--rounds"),
            "tasks.names": (["arithmetic", "sort"], "--task"),
            "run.resume": (None, "--resume"),
            "inference.base_url": ("http://h:1", "--base-url"),
        },
    )
    assert config.run.rounds == 7 and config.tasks.names == ("arithmetic", "sort")
    assert config.run.resume is False and config.source("run.resume") == "default"
    assert config.extras("inference") == {"base_url": "http://h:1"}
    assert config.source("inference.base_url") == "--base-url"


# ------------------------------------------------------------------------------ environment


@pytest.mark.parametrize(
    "variable, key, value",
    [
        ("GDRIVE_PATH", "swarm.root", "/content/drive/MyDrive/swarm"),
        ("EXPERIMENT_NAME", "run.experiment", "exp-1"),
        ("NODE_ROLE", "run.role", "coordinator"),
        ("NODE_ID", "run.node_id", "colab-7"),
        ("MODEL_NAME", "model.name", "Gensyn/Qwen2.5-0.5B-Instruct"),
    ],
)
def test_rl_swarm_variables(variable, key, value):
    config = load_config(env={variable: value})
    section, name = key.split(".")
    assert getattr(getattr(config, section), name) == value
    assert config.source(key) == f"env {variable}"
    # The SAPO_* name of the same key wins; an empty RL-Swarm variable is unset.
    sapo = "SAPO_" + key.replace(".", "_").upper()
    other = "worker" if key == "run.role" else "other"
    assert getattr(getattr(load_config(env={variable: value, sapo: other}), section), name) == other
    assert load_config(env={variable: ""}).source(key) == "default"


def test_env_coerces_every_type():
    env = {
        "SAPO_RUN_ROUNDS": " 12 ",
        "SAPO_RUN_RESUME": "yes",
        "SAPO_ADVANTAGES_SCALE_BY_STD": "off",
        "SAPO_INFERENCE_TEMPERATURE": "0.7",
        "SAPO_SWARM_ROUND_SECONDS": "60",
        "SAPO_SWARM_SECRET": "hunter2",
        "SAPO_TASKS_NAMES": "arithmetic, sort",
        "SAPO_TASKS_WEIGHTS": "[1, 2.5]",
        "SAPO_REWARDS_WEIGHTS": "{correctness = 1.0, format = 0.5}",
        "SAPO_MODEL_NAME": "1.10",
        "SAPO_INFERENCE_BASE_URL": "http://localhost:8000/v1",
        "SAPO_TASKS_ARITHMETIC__MAX_DIGITS": "4",
        "SAPO_TASKS_SORT_LENGTH": "5",
        "SAPO_REWARDS_FORMAT__STRICT": "true",
    }
    config = load_config(env=env)
    assert config.run.rounds == 12 and config.run.resume is True
    assert config.advantages.scale_by_std is False
    assert config.inference.temperature == 0.7 and config.swarm.round_seconds == 60.0
    assert config.swarm.secret == "hunter2"
    assert config.tasks.names == ("arithmetic", "sort") and config.tasks.weights == (1.0, 2.5)
    assert config.rewards.weights == {"correctness": 1.0, "format": 0.5}
    assert config.model.name == "1.10"
    assert config.extras("inference") == {"base_url": "http://localhost:8000/v1"}
    assert config.extras("tasks") == {"arithmetic": {"max_digits": "4"}, "sort": {"length": "5"}}
    assert config.extras("rewards", "format") == {"strict": "true"}
    assert config.source("tasks.arithmetic.max_digits") == "env SAPO_TASKS_ARITHMETIC__MAX_DIGITS"
    assert config.source("swarm.round_seconds") == "env SAPO_SWARM_ROUND_SECONDS"
    for text, expected in [("1", True), ("0", False), ("TRUE", True), ("no", False), ("On", True)]:
        assert load_config(env={"SAPO_RUN_RESUME": text}).run.resume is expected
    assert load_config(env={"SAPO_RUN_LOG_LEVEL": "DEBUG"}).run.log_level == "debug"
    assert load_config(env={"SAPO_REWARDS_WEIGHTS": "correctness=2"}).rewards.weights == {"correctness": 2.0}


def test_env_variables_that_are_not_config_are_ignored():
    env = {
        "SAPO_STRICT_PLUGINS": "1",
        "SAPO_LOAD_PLUGINS": "a,b",
        "SAPO_DISABLE_PLUGINS": "c",
        "SAPO_CONFIG": "",
        "SAPO_": "x",
        "OPENAI_API_KEY": "sk-123",
        "PATH": "/bin",
    }
    assert load_config(env=env) == Config()


def test_env_unknown_key_names_the_variable_and_suggests():
    message = error(env={"SAPO_RUN_EXPERIMNT": "x"})
    assert "Unknown key 'run.experimnt' (from env SAPO_RUN_EXPERIMNT)" in message
    assert "Did you mean 'run.experiment' (SAPO_RUN_EXPERIMENT)?" in message
    assert "SAPO_TASKS_PROBLEMS_PER_ROUND" in error(env={"SAPO_TASKS_PROBLEMS_PER_ROUN": "3"})
    assert "SAPO_RUN_<KEY>" in error(env={"SAPO_RUN": "x"})


# ------------------------------------------------------------------------------------ file


def test_toml_file_with_subsections_and_extras(tmp_path):
    file = write(
        tmp_path,
        """
        [run]
        experiment = "math"
        role = "coordinator"
        [inference]
        backend = "openai"
        temperature = 0
        base_url = "http://h/v1"
        [inference.headers]
        X-Team = "a"
        [tasks]
        names = ["arithmetic", "sort"]
        weights = [3, 1]
        [tasks.arithmetic]
        difficulty = 3
        [rewards.weights]
        correctness = 1.0
        [rewards.format]
        strict = true
        [train]
        lr = 1e-5
        """,
    )
    config = load_config(file=file, env={}, sets=["tasks.arithmetic.digits=[1, 2]", "inference.headers.X-Id=7"])
    assert config.run.experiment == "math" and config.run.role == "coordinator"
    assert config.inference.temperature == 0.0 and isinstance(config.inference.temperature, float)
    assert config.tasks.weights == (3.0, 1.0)
    assert config.rewards.weights == {"correctness": 1.0}  # a table value replaces the default table
    assert config.extras("inference") == {"base_url": "http://h/v1", "headers": {"X-Team": "a", "X-Id": 7}}
    assert config.source("inference.headers") == "--set"
    assert config.extras("tasks", "arithmetic") == {"difficulty": 3, "digits": [1, 2]}
    assert config.extras("tasks", "sort") == {}
    assert config.extras("rewards") == {"format": {"strict": True}}
    assert config.extras("train") == {"lr": 1e-5}
    assert config.source("tasks.arithmetic.difficulty") == f"file {file}"
    data = config.to_dict()
    assert data["tasks"]["arithmetic"] == {"difficulty": 3, "digits": [1, 2]}
    assert data["tasks"]["names"] == ["arithmetic", "sort"] and data["train"] == {"backend": "grpo", "lr": 1e-5}


def test_file_unknown_keys_and_sections(tmp_path):
    message = error(file=write(tmp_path, "[run]\nexperimnt = 'x'\n"))
    assert "Unknown key 'run.experimnt' (from file " in message and "Did you mean 'run.experiment'?" in message
    message = error(file=write(tmp_path, "[inferance]\ntemperature = 0.5\n"))
    assert "Unknown section 'inferance' (from file" in message and "Did you mean 'inference'?" in message
    message = error(file=write(tmp_path, "experiment = 'x'\n"))
    assert "Unknown key 'experiment'" in message and "Did you mean 'run.experiment'?" in message
    assert "is a section, not a key" in error(file=write(tmp_path, "run = 3\n"))
    assert "Did you mean 'tasks.names'?" in error(file=write(tmp_path, "[tasks]\nname = ['a']\n"))
    assert "run.rounds = {'x': 1} (from file" in error(file=write(tmp_path, "[run.rounds]\nx = 1\n"))
    assert "Did you mean 'run.seed'?" in error(file=write(tmp_path, "[model]\nseed = 1\n"))


def test_missing_and_broken_config_files(tmp_path):
    missing = tmp_path / "nope.toml"
    assert f"Config file {missing} not found" in error(file=missing)
    assert f"Config file {missing} not found" in error(env={"SAPO_CONFIG": str(missing)})
    broken = write(tmp_path, "[run]\nrounds = 3\nseed = \n")
    message = error(file=broken)
    assert f"Config file {broken} is not valid TOML" in message and "line 3" in message
    assert "is a folder" in error(file=tmp_path)
    (tmp_path / "latin.toml").write_bytes(b"[model]\nname = '\xe9'\n")
    assert "not UTF-8" in error(file=tmp_path / "latin.toml")


# ------------------------------------------------------------------------------------ --set


def test_set_values_are_toml_when_they_parse_else_plain_strings():
    config = load_config(
        env={},
        sets=[
            "inference.temperature=0.7",
            "run.resume=true",
            'tasks.names=["arithmetic", "sort"]',
            "rewards.weights={correctness=1.0, format=0}",
            "inference.base_url=http://h:8000/v1?a=b",  # a value may hold '='
            "model.name=1.10",  # a str field keeps the text typed, not the float 1.1
            'run.experiment="quoted"',
            "run.node_id = 2024-01-01 ",
            "train.lr=1e-5",
            "train.betas=[0.9, 0.99]",
            "train.schedule={warmup=10}",
            "train.name=cosine",
            "train.note=",
        ],
    )
    assert config.inference.temperature == 0.7 and config.run.resume is True
    assert config.tasks.names == ("arithmetic", "sort")
    assert config.rewards.weights == {"correctness": 1.0, "format": 0.0}
    assert config.extras("inference") == {"base_url": "http://h:8000/v1?a=b"}
    assert config.model.name == "1.10" and config.run.experiment == "quoted" and config.run.node_id == "2024-01-01"
    assert config.extras("train") == {
        "lr": 1e-5,
        "betas": [0.9, 0.99],
        "schedule": {"warmup": 10},
        "name": "cosine",
        "note": "",
    }
    assert all(config.source(f"train.{k}") == "--set" for k in config.extras("train"))


def test_set_one_entry_of_a_table():
    config = load_config(env={"SAPO_REWARDS_WEIGHTS": "correctness=2"}, sets=["rewards.weights.format=0.5"])
    assert config.rewards.weights == {"correctness": 2.0, "format": 0.5}
    assert config.source("rewards.weights") == "--set" and config.source("rewards.weights.format") == "--set"
    config = load_config(env={}, sets=["tasks={names=['sort'], sort={length=4}}"])
    assert config.tasks.names == ("sort",) and config.extras("tasks", "sort") == {"length": 4}


def test_malformed_set():
    message = error(sets=["inference.temperature"])
    assert "--set expects KEY=VALUE (e.g. --set inference.temperature=0.7), got 'inference.temperature'" in message
    assert "without '='" in error(sets=["hunter2 !"])  # not a key: not echoed
    assert "KEY=VALUE" in error(sets=["=3"])
    assert "Malformed key" in error(sets=["run..seed=1"])


def test_unknown_keys_from_each_source_suggest_the_closest():
    message = error(sets=["inference.temprature=0.3"])
    assert message == "Unknown key 'inference.temprature' (from --set). Did you mean 'inference.temperature'?"
    assert "(from --rnds). Did you mean 'run.rounds'?" in error(flags={"run.rnds": (3, "--rnds")})
    assert "(from env SAPO_SWARM_LIVE_SECOND)" in error(env={"SAPO_SWARM_LIVE_SECOND": "3"})
    assert "Did you mean 'inference.temperature'?" in error(sets=["temperature=0.3"])
    assert "Did you mean 'checkpoint.every'?" in error(sets=["checkpiont.every=2"])
    # Extras are only checked later, against the backend's settings class.
    assert load_config(env={}, sets=["inference.max_tokens=5"]).extras("inference") == {"max_tokens": 5}


# ----------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (
            {"env": {"SAPO_INFERENCE_TOP_P": "1.5"}},
            "inference.top_p = 1.5 (from env SAPO_INFERENCE_TOP_P): must be in (0, 1]",
        ),
        ({"sets": ["run.rounds=ten"]}, "run.rounds = 'ten' (from --set): expected an integer"),
        ({"sets": ["run.rounds=2.5"]}, "run.rounds = 2.5 (from --set): expected an integer"),
        ({"sets": ["run.rounds=0"]}, "run.rounds = 0 (from --set): must be >= 1"),
        ({"sets": ["run.resume=maybe"]}, "run.resume = 'maybe' (from --set): expected a boolean (true/false)"),
        ({"sets": ["inference.temperature=nan"]}, "expected a finite number"),
        ({"sets": ["inference.temperature=-1"]}, "must be >= 0"),
        (
            {"sets": ["run.role=boss"]},
            "run.role = 'boss' (from --set): must be one of: coordinator, worker, contributor",
        ),
        ({"sets": ["run.log_level=verbose"]}, "must be one of: debug, info, warning, error"),
        (
            {"sets": ["run.experiment=a..b"]},
            "run.experiment = 'a..b' (from --set): it contains '..' (a name is 1-64 characters",
        ),
        ({"sets": ["run.node_id=.hidden"]}, "not starting with '.' or '-'"),
        ({"sets": ["run.node_id=-x"]}, "run.node_id = '-x'"),
        ({"sets": ["run.node_id=a/b"]}, "run.node_id = 'a/b'"),
        ({"sets": ["run.node_id=" + "n" * 65]}, "it is 65 characters long (at most 64)"),
        ({"sets": ["run.workdir=gs://bucket"]}, "must be a local folder"),
        ({"sets": ["swarm.quorum=0"]}, "must be in (0, 1]"),
        ({"sets": ["swarm.local_groups=-1"]}, "must be >= 0"),
        ({"sets": ["swarm.poll_seconds=0"]}, "must be > 0"),
        (
            {"sets": ["tasks.weights=[1, 2]"]},
            "tasks.weights = [1.0, 2.0] (from --set): must be empty (uniform) or give one weight per task",
        ),
        ({"sets": ["tasks.names=a,b", "tasks.weights=1,0"]}, "every weight must be > 0"),
        ({"sets": ["tasks.names=[]"]}, "must name at least one task"),
        ({"sets": ["tasks.names=a,a"]}, "must not repeat a task"),
        ({"sets": ["rewards.weights={correctness='high'}"]}, "expected a table of numbers"),
        ({"sets": ["rewards.weights={}"]}, "must name at least one reward function"),
        ({"flags": {"model.name": (3, "--model")}}, "model.name = 3 (from --model): expected a string"),
        ({"env": {"SAPO_RUN_SEED": "1.5"}}, "run.seed = '1.5' (from env SAPO_RUN_SEED): expected an integer"),
        ({"sets": ["tasks.names.x=1"]}, "'tasks.names' is a single value"),
        ({"sets": ["tasks.arithmetic=3"]}, "tasks.<name>.<key>"),
    ],
)
def test_bad_values_name_the_key_source_and_problem(kwargs, expected):
    assert expected in error(**kwargs)


def test_bad_value_from_the_file_names_the_file(tmp_path):
    file = write(tmp_path, "[inference]\ntemperature = 'hot'\n[checkpoint]\nkeep = 0\n")
    assert error(file=file) == f"inference.temperature = 'hot' (from file {file}): expected a number"


# ------------------------------------------------------------------------------- secrets


def test_secrets_are_redacted_in_dumps_and_reprs():
    config = load_config(
        env={"SAPO_SWARM_SECRET": "hunter2", "SAPO_INFERENCE_API_KEY": "sk-live"},
        sets=[
            "inference.headers={Authorization='Bearer tok', X-Team='a'}",
            "train.wandb_token=t0k",
            "inference.max_new_tokens=9",
        ],
    )
    data = config.to_dict()
    assert data["swarm"]["secret"] == "***" and data["inference"]["api_key"] == "***"
    assert data["inference"]["headers"] == {"Authorization": "***", "X-Team": "a"}
    assert data["train"]["wandb_token"] == "***" and data["inference"]["max_new_tokens"] == 9
    rows = {key: (value, source) for key, value, source in config.items()}
    assert rows["swarm.secret"] == ("***", "env SAPO_SWARM_SECRET")
    assert rows["inference.api_key"] == ("***", "env SAPO_INFERENCE_API_KEY")
    dumped = repr(config) + repr(config.items()) + repr(data)
    assert "hunter2" not in dumped and "sk-live" not in dumped and "tok" not in dumped.replace("token", "")
    raw = config.to_dict(redact=False)
    assert raw["swarm"]["secret"] == "hunter2" and raw["inference"]["api_key"] == "sk-live"
    assert raw["inference"]["headers"]["Authorization"] == "Bearer tok"
    assert {k: v for k, v, _ in config.items(redact=False)}["train.wandb_token"] == "t0k"
    assert load_config(env={}).to_dict()["swarm"]["secret"] == ""  # unset stays visibly unset
    assert is_secret("swarm.secret") and is_secret("inference.api_key") and is_secret("tasks.x.password")
    assert not is_secret("inference.max_new_tokens") and not is_secret("inference.base_url")


def test_secrets_never_appear_in_error_messages(tmp_path):
    file = write(tmp_path, "[swarm]\nsecret = 12345\n")
    message = error(file=file)
    assert message == f"swarm.secret: <redacted> (from file {file}): expected a string"

    @attrs.frozen
    class Settings:
        api_key: str = attrs.field(validator=attrs.validators.matches_re(r"sk-.*"))
        password: int = 0

    with pytest.raises(ConfigError) as info:
        structure(Settings, {"api_key": "wrong-secret-value"}, where="inference", sources={"api_key": "--set"})
    assert "wrong-secret-value" not in str(info.value)
    assert str(info.value).startswith("inference.api_key: <redacted> (from --set):")
    with pytest.raises(ConfigError) as info:
        structure(Settings, {"api_key": "sk-1", "password": "pa55word"}, where="x")
    assert "pa55word" not in str(info.value) and "x.password: <redacted>" in str(info.value)


# ----------------------------------------------------------------------------- structure()


@attrs.frozen
class Sample:
    url: str  # required
    key_file: str | None = None
    retries: int | None = None
    stream: bool = False
    stop: list[str] = attrs.field(factory=list)
    tags: tuple[str, ...] = ()
    weights: dict[str, float] = attrs.field(factory=dict)
    timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    mode: str = attrs.field(default="a", validator=attrs.validators.in_(["a", "b"]))


def test_structure_coerces_typed_values_and_strings():
    typed = structure(
        Sample,
        {
            "url": "u",
            "key_file": None,
            "retries": 3,
            "stream": True,
            "stop": ["</a>"],
            "tags": ["x"],
            "weights": {"a": 1},
        },
        where="inference",
    )
    assert typed == Sample(url="u", retries=3, stream=True, stop=["</a>"], tags=("x",), weights={"a": 1.0})
    texts = structure(
        Sample,
        {
            "url": "u",
            "key_file": "/k",
            "retries": "",
            "stream": "on",
            "stop": "a, b",
            "tags": '["x", "y"]',
            "weights": "{a = 1, b = 0.5}",
            "timeout": "2.5",
            "mode": "b",
        },
        where="inference",
    )
    assert texts == Sample(
        url="u",
        key_file="/k",
        retries=None,
        stream=True,
        stop=["a", "b"],
        tags=("x", "y"),
        weights={"a": 1.0, "b": 0.5},
        timeout=2.5,
        mode="b",
    )
    assert structure(Sample, {"url": "u", "retries": "none"}, where="x").retries is None
    assert structure(Sample, {"url": "u", "key_file": ""}, where="x").key_file is None


@pytest.mark.parametrize(
    "values, sources, expected",
    [
        (
            {"url": "u", "retires": 3},
            {"retires": "--set"},
            "Unknown key 'inference.retires' (from --set). Did you mean 'inference.retries'?",
        ),
        ({"url": "u", "temprature": 1}, None, "Did you mean 'inference.temperature'?"),  # a core key of the section
        ({}, None, "Missing required key: inference.url"),
        ({"url": "u", "retries": "many"}, None, "inference.retries = 'many': expected an integer (empty for none)"),
        ({"url": "u", "stream": 1}, None, "expected a boolean"),
        ({"url": "u", "stop": 3}, None, "expected a list of strings"),
        (
            {"url": "u", "weights": {"a": "x"}},
            {"weights": "file f.toml"},
            "inference.weights = {'a': 'x'} (from file f.toml): expected a table of numbers",
        ),
        (
            {"url": "u", "timeout": 0},
            {"timeout": "env T"},
            "inference.timeout = 0.0 (from env T): 'timeout' must be > 0: 0.0",
        ),
        ({"url": "u", "mode": "c"}, None, "inference.mode = 'c': 'mode' must be in ['a', 'b']"),
    ],
)
def test_structure_errors(values, sources, expected):
    with pytest.raises(ConfigError) as info:
        structure(Sample, values, where="inference", sources=sources)
    assert expected in str(info.value)


def test_structure_names_the_key_of_a_cross_field_validator():
    @attrs.frozen
    class Window:
        low: int = 0
        high: int = attrs.field(default=1)

        @high.validator
        def _check(self, attribute, value):
            if value <= self.low:
                raise ValueError("must be above low", attribute)

    with pytest.raises(ConfigError, match=r"^w.high = 1 \(from --set\): must be above low$"):
        structure(Window, {"low": 5, "high": "1"}, where="w", sources={"high": "--set"})


def test_structure_without_a_settings_class():
    assert structure(None, {}, where="train") is None
    with pytest.raises(ConfigError, match=r"'train.lr' \(from --set\): 'train' takes no settings"):
        structure(None, Extras({"lr": 1}, sources={"lr": "--set"}), where="train")


def test_config_settings_use_the_text_as_typed_and_the_sources():
    @attrs.frozen
    class Backend:
        revision: str = "main"
        lr: float = 1e-3
        retries: int | None = None

    config = load_config(env={"SAPO_TRAIN_RETRIES": "4"}, sets=["train.revision=1.10", "train.lr=1e-5"])
    extras = config.extras("train")
    assert extras == {"revision": 1.1, "lr": 1e-5, "retries": "4"}  # --set values are TOML when they parse
    assert extras.sources == {"revision": "--set", "lr": "--set", "retries": "env SAPO_TRAIN_RETRIES"}
    assert config.settings(Backend, "train") == Backend(revision="1.10", lr=1e-5, retries=4)
    assert structure(Backend, extras, where="train") == Backend(revision="1.10", lr=1e-5, retries=4)
    with pytest.raises(
        ConfigError,
        match=r"Unknown keys 'train.retries' \(from env SAPO_TRAIN_RETRIES\), 'train.revision' \(from --set\), .*'train' takes no settings",
    ):
        config.settings(None, "train")

    @attrs.frozen
    class Difficulty:
        difficulty: int = 1

    config = load_config(env={}, sets=["tasks.arithmetic.difficulty=4", "tasks.arithmetic.dificulty=5"])
    with pytest.raises(
        ConfigError, match=r"'tasks.arithmetic.dificulty' \(from --set\). Did you mean 'tasks.arithmetic.difficulty'"
    ):
        config.settings(Difficulty, "tasks", "arithmetic")
    assert config.settings(Difficulty, "tasks", "sort") == Difficulty()


# ------------------------------------------------------------------- run.dir and [eval]


def test_eval_section_and_run_dir():
    config = load_config(env={})
    assert (config.eval.every, config.eval.problems, config.eval.num_completions) == (5, 32, 1)
    assert config.eval.temperature == 0.0 and config.eval.seed == 0 and config.run.dir == ""
    assert config.experiment_dir == Path("runs") / "default"
    config = load_config(env={"SAPO_EVAL_EVERY": "0", "SAPO_RUN_DIR": "out/run1"}, sets=["eval.problems=8"])
    assert config.eval.every == 0 and config.eval.problems == 8 and config.run.dir == "out/run1"
    assert config.source("eval.every") == "env SAPO_EVAL_EVERY"
    assert config.to_dict()["eval"]["num_completions"] == 1


@pytest.mark.parametrize(
    "sets, message",
    [
        (["eval.every=-1"], "eval.every = -1 (from --set): must be >= 0"),
        (["eval.problems=0"], "must be >= 1"),
        (["eval.temperature=-0.5"], "must be >= 0"),
        (["eval.temprature=0.5"], "Did you mean 'eval.temperature'?"),
        (["eval.backend=x"], "Unknown key 'eval.backend'"),
        (["run.dir=gs://bucket/run"], "run.dir = 'gs://bucket/run' (from --set): must be a local folder"),
    ],
)
def test_eval_and_run_dir_errors(sets, message):
    assert message in error(sets=sets)
