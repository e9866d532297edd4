"""TRL's ``GRPOConfig`` at the settings every sapo-against-TRL benchmark holds equal (bench/learner_step.py,
bench/round_vs_trl.py): the optimizer, the loss, the precision and the quiet trainer, in one place so the
two scripts cannot drift apart. Each script adds what its own comparison fixes (batching, generation).
"""

from __future__ import annotations

from typing import Any


def equal_settings(output_dir: str, device_type: str, *, loss_type: str = "grpo", seed: int = 0) -> dict[str, Any]:
    """``GRPOConfig`` keywords matching sapo's defaults: AdamW lr 1e-5, betas 0.9 / 0.99, no weight
    decay, a constant schedule, clipping at 1.0; the loss clipped at 0.2 / 0.28 without a KL term, one
    update per batch; fp32 master weights under bf16 autocast on CUDA, fp32 on the CPU; nothing
    logged, saved, shuffled or loaded in the background."""
    return {
        "output_dir": output_dir,
        "learning_rate": 1e-5,
        "adam_beta1": 0.9,
        "adam_beta2": 0.99,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "lr_scheduler_type": "constant",
        "loss_type": loss_type,
        "epsilon": 0.2,
        "epsilon_high": 0.28,
        "beta": 0.0,
        "num_iterations": 1,
        "bf16": device_type == "cuda",
        "use_cpu": device_type == "cpu",
        "seed": seed,
        "logging_steps": 10**6,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "log_completions": False,
        "shuffle_dataset": False,
        "dataloader_num_workers": 0,
    }
