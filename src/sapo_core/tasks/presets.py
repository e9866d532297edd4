"""Named task mixes: ``tasks.preset = "<name>"`` in a config selects their tasks, equally weighted.

``sapo-paper`` is the nine ReasoningGYM datasets the SAPO paper's swarm shared rollouts on
(arXiv:2509.08721); its tasks come from the sapo-reasoning-gym plugin.
"""

from __future__ import annotations

PRESETS: dict[str, tuple[str, ...]] = {
    "sapo-paper": tuple(
        f"rg:{name}"
        for name in (
            "arc_1d",
            "basic_arithmetic",
            "base_conversion",
            "bf",
            "binary_matrix",
            "calendar_arithmetic",
            "decimal_arithmetic",
            "fraction_simplification",
            "propositional_logic",
        )
    ),
}

#: Task names with this prefix come from a plugin distribution that may not be installed.
PLUGIN_PREFIXES: dict[str, str] = {"rg:": "sapo-reasoning-gym"}
