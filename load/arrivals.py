"""Arrival processes: the offsets (seconds from the start of a run) at which requests are due.

All are seeded so a run's schedule can be reproduced. ``burstiness`` is the coefficient of variation (CV = std/mean) of
the inter-arrival gaps: 0 is a metronome, 1 is Poisson, above 1 is bursty. (vLLM's ``--burstiness`` is the gamma shape
k instead; CV = 1/sqrt(k).)
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

ARRIVAL_KINDS = ("constant", "poisson", "gamma")


def inter_arrival_gaps(kind: str, rate: float, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """Endless inter-arrival gaps (seconds) with mean 1/rate."""
    if rate <= 0 or not math.isfinite(rate):
        raise ValueError(f"rate must be a positive number of requests per second, got {rate}")
    mean_gap = 1.0 / rate
    rng = random.Random(seed)
    if kind == "constant":
        while True:
            yield mean_gap
    elif kind == "poisson":
        while True:
            yield rng.expovariate(rate)
    elif kind == "gamma":
        if burstiness < 0 or not math.isfinite(burstiness):
            raise ValueError(f"burstiness (the CV of inter-arrival gaps) must be >= 0, got {burstiness}")
        if burstiness == 0:
            while True:
                yield mean_gap
        # Gamma with shape k has CV 1/sqrt(k); scale keeps the mean at 1/rate.
        shape = 1.0 / (burstiness * burstiness)
        scale = mean_gap / shape
        while True:
            yield rng.gammavariate(shape, scale)
    else:
        raise ValueError(f"arrival must be one of {', '.join(ARRIVAL_KINDS)}, got {kind!r}")


def arrival_offsets(kind: str, rate: float, *, duration_s: float, max_requests: int | None = None,
                    burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Offsets of every request due within [0, duration_s), at most max_requests of them. The first is due at 0."""
    offsets: list[float] = []
    gaps = inter_arrival_gaps(kind, rate, burstiness, seed)
    if kind == "constant" or (kind == "gamma" and burstiness == 0):
        # i / rate, not a running sum: ten additions of 0.1 fall short of 1.0 and would add an 11th request.
        next(gaps)  # validates rate
        t = 0.0
        while t < duration_s and (max_requests is None or len(offsets) < max_requests):
            offsets.append(t)
            t = len(offsets) / rate
        return offsets
    t = 0.0
    while t < duration_s and (max_requests is None or len(offsets) < max_requests):
        offsets.append(t)
        t += next(gaps)
    return offsets
