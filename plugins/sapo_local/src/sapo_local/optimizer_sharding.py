"""AdamW's state sharded over the processes of a distributed launch (ZeRO stage 1): ``train.shard_optimizer``.

Under DDP every process holds the whole gradient after the all-reduce and, with a plain
optimizer, the whole of AdamW's two moments too: 8 bytes a parameter in fp32, on every process.
torch's ``ZeroRedundancyOptimizer`` gives each process the moments of its own share of the
parameters; it updates that share and broadcasts it to the others. The arithmetic of each
parameter's update is the same, so the weights are the same; each process holds 1/N of the moments.

Checkpoints keep the layout of the unsharded optimizer: one state dict over all the parameters,
from which any number of processes resumes (`load_full_state`). Gathering it is a collective and
only the main process writes checkpoints, so the learner gathers after each step that a
checkpoint with the optimizer's state follows (`full_state`). The tensors travel by ``send`` and
``recv``, their names and shapes as JSON (`sapo_local.distributed.all_gather_json`): torch's own
``consolidate_state_dict`` pickles, and nothing that crosses a process boundary here is pickle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

from sapo_local.distributed import all_gather_json, exchange_device, world

__all__ = ["adamw", "full_state", "is_sharded", "load_full_state", "local_optimizer"]


def adamw(params: Sequence[torch.Tensor], *, shard: bool, **settings: Any) -> torch.optim.Optimizer:
    """AdamW over ``params``: each process's share of them (and of the state) when ``shard``."""
    if shard:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, **settings)
    return torch.optim.AdamW(params, **settings)


def is_sharded(optimizer: Any) -> bool:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return isinstance(optimizer, ZeroRedundancyOptimizer)


def local_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The optimizer that updates (and holds the state of) this process's parameters."""
    return optimizer.optim if is_sharded(optimizer) else optimizer


def _hyperparameters(optimizer: Any) -> dict[str, Any]:
    """The settings of the (single) parameter group: the local optimizer's, with the learning rate as scheduled."""
    groups = (local_optimizer(optimizer).param_groups[0], optimizer.param_groups[0])
    return {key: value for group in groups for key, value in group.items() if key != "params"}


def full_state(optimizer: Any, params: Sequence[torch.Tensor], *, device: torch.device) -> dict[str, Any] | None:
    """The state dict an unsharded AdamW over ``params`` would have, on the main process; None on the others.

    A collective: every process calls it. ``device`` is where the processes' tensors can travel
    (the GPU under NCCL).
    """
    rank, size = world()
    index = {id(p): i for i, p in enumerate(params)}
    mine = {index[id(p)]: entry for p, entry in local_optimizer(optimizer).state.items()}
    shapes = {
        str(i): {name: [list(t.shape), str(t.dtype).removeprefix("torch.")] for name, t in entry.items()}
        for i, entry in mine.items()
    }
    described = all_gather_json(shapes, device=device)
    where = exchange_device(device)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for owner, entries in enumerate(described):
        for i in sorted(entries, key=int):
            for name, (shape, dtype) in sorted(entries[i].items()):
                if owner == rank == 0:
                    state.setdefault(int(i), {})[name] = mine[int(i)][name].detach().to("cpu", copy=True)
                elif owner == rank:
                    dist.send(mine[int(i)][name].detach().contiguous().to(where), dst=0)
                elif rank == 0:
                    received = torch.empty(shape, dtype=getattr(torch, dtype), device=where)
                    dist.recv(received, src=owner)
                    state.setdefault(int(i), {})[name] = received.cpu()
    if rank != 0:
        return None
    group = {**_hyperparameters(optimizer), "params": list(range(len(params)))}
    return {"state": dict(sorted(state.items())), "param_groups": [group]}


def load_full_state(optimizer: Any, params: Sequence[torch.Tensor], state_dict: Mapping[str, Any]) -> None:
    """Load an unsharded AdamW's state dict over ``params``: this process keeps its share of it."""
    (group,) = state_dict["param_groups"]
    settings = {key: value for key, value in group.items() if key != "params"}
    index = {id(p): i for i, p in enumerate(params)}
    local = local_optimizer(optimizer)
    owned = [p for g in local.param_groups for p in g["params"]]
    saved = state_dict["state"]
    local.load_state_dict(
        {
            "state": {k: saved[index[id(p)]] for k, p in enumerate(owned) if index[id(p)] in saved},
            "param_groups": [{**settings, "params": list(range(len(owned)))}],
        }
    )
    for exposed in optimizer.param_groups:  # what the scheduler reads and sets
        exposed.update(settings)
