"""One percentile rule for every benchmark: nearest rank.

The p-th percentile of n samples is the ceil(p * n)-th smallest, so it is always one of the
samples, never below the median, and the 100th percentile is the maximum. With two samples p90 is
the larger one (a rule that floors ``p * (n - 1)`` would report the smaller, below the median).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ``samples`` for ``q`` in (0, 1]; ``samples`` need not be sorted."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 < q <= 1:
        raise ValueError(f"percentile rank {q} is not in (0, 1]")
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered) - 1e-9) - 1)]
