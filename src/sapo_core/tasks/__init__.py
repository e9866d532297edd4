"""The built-in checkable tasks: one module per task, each a settings class and a `Task`.

``arithmetic`` (integer expressions), ``sort`` (alphabetise words), ``sat`` (planted k-SAT) and
``countdown`` (reach a target with given numbers). All share the answer format of
`sapo_core.answers`; `sapo_core.builtin.tasks` registers them with the plugin manager.
"""
