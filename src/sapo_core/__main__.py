"""``python -m sapo_core`` is ``sapo``; e.g. ``accelerate launch -m sapo_core run ...``."""

from sapo_core.cli import main

main()
