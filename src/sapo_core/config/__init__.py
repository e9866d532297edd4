"""The resolved configuration of a sapo run: schema, sources, precedence, validation.

Precedence, lowest first: defaults < TOML config file < environment < command-line flags <
``--set KEY=VALUE`` (within a layer, the last value wins). Every resolved key remembers where it
came from (``"default"``, ``"file <path>"``, ``"env NAME"``, a flag's label, ``"--set"``) so
errors and ``sapo config`` can say so.

The schema is one frozen attrs class per section (`RunSettings` ...), held by `Config`. Keys of
``inference``, ``train``, ``checkpoint``, ``swarm`` and ``eval`` that are not core keys are *extras*:
kept raw because only the chosen backend knows them, and built into the backend's settings class
by `backend_settings` (or `structure`, `Config.settings`). ``tasks.<task>.<key>`` and
``rewards.<reward>.<key>`` are the extras of one task or reward function. ``run``, ``model`` and
``advantages`` take no extras; ``eval``'s are the settings of its own inference backend
(``eval.inference``), when it has one.

Values are converted by the attrs field's type annotation with one converter (`structure`), for
the core sections and the backends' settings alike. A string (from the environment, a flag or
``--set``) is parsed by the field's type: ``"0.7"`` for a float, ``"yes"`` for a bool,
``"a,b"`` or ``'["a","b"]'`` for a list, ``"{a=1.0}"`` for a table.

Secrets (``swarm.secret``, fields whose metadata has ``secret=True``, and extras whose key
contains key/secret/token/password/passwd/passphrase/auth/credential/bearer/cookie) never appear in
exception messages and are shown as ``"***"`` by `Config.to_dict` and `Config.items` unless ``redact=False``.

Where each part lives:

* `schema`: the section classes, their validators, `SECTIONS`;
* `convert`: the converter from a raw value to a type annotation, a dispatch table by type;
* `settings`: settings classes, `structure`, and `backend_settings`, the one builder of a backend's settings;
* `secrets`: which keys are secret, and what of a value errors and ``sapo config`` may show;
* `suggest`: "Did you mean ...?" for an unknown key;
* `resolved`: `Config`, the resolved values with their sources;
* `layers`: `load_config`, which reads the file, the environment, the flags and ``--set`` in order.
"""

from __future__ import annotations

from sapo_core.config.layers import load_config
from sapo_core.config.resolved import Config
from sapo_core.config.schema import (
    LOG_LEVELS,
    OPTIMIZER_STATES,
    RL_SWARM_ENV,
    ROLES,
    SECTIONS,
    AdvantagesSettings,
    CheckpointSettings,
    EvalSettings,
    InferenceSettings,
    ModelSettings,
    RewardsSettings,
    RunSettings,
    SwarmSettings,
    TasksSettings,
    TrainSettings,
)
from sapo_core.config.secrets import REDACTED, SECRET, is_secret
from sapo_core.config.settings import (
    Extras,
    backend_settings,
    is_settings_class,
    settings_fields,
    settings_keys,
    structure,
)
from sapo_core.errors import ConfigError

__all__ = [
    "LOG_LEVELS",
    "OPTIMIZER_STATES",
    "REDACTED",
    "RL_SWARM_ENV",
    "ROLES",
    "SECRET",
    "SECTIONS",
    "AdvantagesSettings",
    "CheckpointSettings",
    "Config",
    "ConfigError",
    "EvalSettings",
    "Extras",
    "InferenceSettings",
    "ModelSettings",
    "RewardsSettings",
    "RunSettings",
    "SwarmSettings",
    "TasksSettings",
    "TrainSettings",
    "backend_settings",
    "is_secret",
    "is_settings_class",
    "load_config",
    "settings_fields",
    "settings_keys",
    "structure",
]
