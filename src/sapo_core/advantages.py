r"""Group-relative advantages, as in GRPO.

For the G rewards :math:`r_1..r_G` of one problem's completions, with the group mean
:math:`\mu = \frac{1}{G}\sum_j r_j` and the *population* standard deviation
:math:`\sigma = \sqrt{\frac{1}{G}\sum_j (r_j - \mu)^2}`:

* GRPO (DeepSeekMath, arXiv 2402.03300): :math:`A_i = (r_i - \mu) / (\sigma + \epsilon)`.
* Dr. GRPO (arXiv 2503.20783, ``scale_by_std=False``): :math:`A_i = r_i - \mu`, which removes
  the bias toward groups whose rewards barely differ.

The population standard deviation (divide by G) is used because it is the spread of the group
itself, not an estimate for a larger population, and it keeps :math:`\sum_i A_i^2 \approx G`.
TRL's ``GRPOTrainer`` uses the sample one (divide by G - 1); the two differ by the constant
factor :math:`\sqrt{(G-1)/G}`, which the learning rate absorbs.

A zero-variance group (every reward equal) carries no learning signal: its advantages are all
exactly 0.0, never the rounding noise of :math:`0 / \epsilon`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["ZERO_VARIANCE_TOLERANCE", "group_advantages", "is_zero_variance"]

#: Rewards this close to each other count as equal (the same tolerance as `Group.zero_variance`).
ZERO_VARIANCE_TOLERANCE = 1e-12


def is_zero_variance(rewards: Sequence[float]) -> bool:
    """True when every reward equals the first (within `ZERO_VARIANCE_TOLERANCE`); True when empty."""
    return all(math.isclose(r, rewards[0], abs_tol=ZERO_VARIANCE_TOLERANCE) for r in rewards)


def group_advantages(
    rewards: Sequence[float], *, scale_by_std: bool = True, eps: float = 1e-6, gate: Sequence[float] | None = None
) -> tuple[float, ...]:
    """The advantage of each completion of one group, in order (see the module docstring).

    ``gate``: the verifier's scores of the same completions. When they are all equal the group
    gets no advantage, whatever the other (shaping) rewards say: otherwise the std scaling would
    blow a 0.1-weight format reward up to full-size advantages in every group the verifier
    cannot tell apart, and the format would become the whole signal.

    Raises ValueError for a non-finite reward or a negative or non-finite ``eps``: reward
    functions return finite floats, so either is a bug upstream that must not reach training.
    """
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, not {eps}")
    values = [float(r) for r in rewards]
    if not all(math.isfinite(r) for r in values):
        raise ValueError(f"rewards must be finite numbers, got {values}")
    if gate is not None and len(gate) != len(values):
        raise ValueError(f"gate has {len(gate)} scores for {len(values)} rewards")
    if is_zero_variance(values) or (gate is not None and is_zero_variance([float(g) for g in gate])):
        return (0.0,) * len(values)
    mean = math.fsum(values) / len(values)
    centred = [r - mean for r in values]
    if not scale_by_std:
        return tuple(centred)
    std = math.sqrt(math.fsum(c * c for c in centred) / len(centred))
    return tuple(c / (std + eps) for c in centred)
