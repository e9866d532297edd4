"""Exception types users and plugin authors can catch. Every message says what to do."""

from __future__ import annotations

__all__ = ["BackendError", "ConfigError", "PayloadError", "PluginError", "SapoError", "StopRun", "TrainingError"]


class SapoError(Exception):
    """Base class of sapo's errors; the CLI prints them without a traceback."""


class ConfigError(SapoError):
    """A configuration key or value is wrong."""


class PluginError(SapoError):
    """A plugin failed to load, registered a clashing name, or a name is unknown."""


class PayloadError(SapoError, ValueError):
    """Untrusted data (a peer's payload, a downloaded file) failed validation."""


class BackendError(SapoError):
    """A backend cannot work at all (bad credentials, unreachable server, missing model)."""


class TrainingError(SapoError):
    """The learner hit a state it must not continue from (e.g. a non-finite loss)."""


class StopRun(SapoError):
    """A backend asks the node to end its run cleanly (e.g. a usage cap is reached).

    Raised from ``generate`` before any work of the round is done; the node writes what it
    has, tells the observers the run finished, and exits successfully with the message logged.
    """
