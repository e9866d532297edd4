"""Built-in plugin: the checkable tasks of `sapo_core.tasks`."""

from __future__ import annotations

from sapo_core import hookimpl
from sapo_core.interfaces import BackendContext
from sapo_core.registry import Register
from sapo_core.tasks.arithmetic import ArithmeticSettings, ArithmeticTask
from sapo_core.tasks.countdown import CountdownSettings, CountdownTask
from sapo_core.tasks.sat import SatSettings, SatTask
from sapo_core.tasks.sort import SortSettings, SortTask


def arithmetic_task(settings: ArithmeticSettings | None, context: BackendContext) -> ArithmeticTask:
    return ArithmeticTask(settings)


def sort_task(settings: SortSettings | None, context: BackendContext) -> SortTask:
    return SortTask(settings)


def sat_task(settings: SatSettings | None, context: BackendContext) -> SatTask:
    return SatTask(settings)


def countdown_task(settings: CountdownSettings | None, context: BackendContext) -> CountdownTask:
    return CountdownTask(settings)


@hookimpl
def register_tasks(register: Register) -> None:
    register("arithmetic", arithmetic_task, settings=ArithmeticSettings, description=ArithmeticTask.description)
    register("sort", sort_task, settings=SortSettings, description=SortTask.description)
    register("sat", sat_task, settings=SatSettings, description=SatTask.description)
    register("countdown", countdown_task, settings=CountdownSettings, description=CountdownTask.description)
