"""Arrival processes: mean and CV of inter-arrival gaps over many seeded samples, and the run's bounds."""

from __future__ import annotations

import statistics

import pytest

from forge.load.arrivals import arrival_offsets, inter_arrival_gaps

SAMPLES = 40_000


def _gaps(kind: str, rate: float, burstiness: float = 1.0, seed: int = 7) -> list[float]:
    gaps = inter_arrival_gaps(kind, rate, burstiness, seed)
    return [next(gaps) for _ in range(SAMPLES)]


def _cv(values: list[float]) -> float:
    return statistics.pstdev(values) / statistics.fmean(values)


def test_poisson_gaps_have_mean_one_over_rate_and_cv_one():
    gaps = _gaps("poisson", rate=20.0)
    # Standard error of the mean of an exponential sample is mean/sqrt(N) ~ 0.5%: 3% tolerance is ~6 sigma.
    assert statistics.fmean(gaps) == pytest.approx(1 / 20.0, rel=0.03)
    assert _cv(gaps) == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize("cv", [0.5, 2.0, 3.0])
def test_gamma_gaps_have_the_requested_cv(cv):
    gaps = _gaps("gamma", rate=10.0, burstiness=cv)
    assert statistics.fmean(gaps) == pytest.approx(0.1, rel=0.05)
    assert _cv(gaps) == pytest.approx(cv, rel=0.06)


def test_constant_gaps_are_exact_and_gamma_cv_zero_is_constant():
    assert set(_gaps("constant", rate=4.0)[:100]) == {0.25}
    assert set(_gaps("gamma", rate=4.0, burstiness=0.0)[:100]) == {0.25}


def test_same_seed_same_schedule_other_seed_other_schedule():
    first = arrival_offsets("poisson", 5.0, duration_s=10, seed=1)
    assert first == arrival_offsets("poisson", 5.0, duration_s=10, seed=1)
    assert first != arrival_offsets("poisson", 5.0, duration_s=10, seed=2)


def test_offsets_are_bounded_by_duration_and_count():
    offsets = arrival_offsets("gamma", 50.0, duration_s=3.0, burstiness=2.0, seed=3)
    assert offsets[0] == 0.0 and all(0 <= t < 3.0 for t in offsets)
    assert offsets == sorted(offsets)
    assert len(arrival_offsets("constant", 50.0, duration_s=3.0, max_requests=17)) == 17
    assert len(arrival_offsets("constant", 10.0, duration_s=1.0)) == 10


@pytest.mark.parametrize("kind,rate,burstiness", [("poisson", 0.0, 1.0), ("poisson", -1.0, 1.0),
                                                  ("gamma", 1.0, -0.5), ("weibull", 1.0, 1.0)])
def test_bad_parameters_are_rejected(kind, rate, burstiness):
    with pytest.raises(ValueError):
        next(inter_arrival_gaps(kind, rate, burstiness))
