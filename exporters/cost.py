"""Cost collector: what each replica's GPUs cost, accrued while the exporter runs, labelled for chargeback.

    forge_gpu_price_usd_per_hour{replica, model, team, cost_center, accelerator, capacity, price_source}
    forge_replica_gpus{replica, model, team, cost_center}
    forge_cost_usd_total{replica, model, team, cost_center}     # price x GPUs x hours since the exporter started
    forge_cost_budget_usd_per_1m_output_tokens{replica, model, team, cost_center}   # deploy.yaml's budget, if set

A provisioned GPU costs the same whether or not its engine answers, so cost accrues for every configured
replica; a target without a known price exports no cost series rather than a guessed one. The counter starts
at 0 when the exporter starts (Prometheus' increase() over it is the spend in a window).
Recording rules for $/1M tokens and $/request read these with the engine counters: see RECORDING_RULES, the one
definition of them (`forge alerts build` writes them into the `*-cost` group of the rule files). The catalog
lists these families under scope `cost` (forge/data/signals.yaml, same types and HELP texts; a test compares).

The budget series lets one generic rule file serve every deployment: ForgeCostPerMillionTokensOverBudget compares
forge:cost_usd_per_1m_output_tokens with it; rules generated from a deploy.yaml with the budget use the number.
"""

from __future__ import annotations

import time

from forge.exporters.config import Target
from forge.exporters.normalize import CanonicalFamily

# PromQL for the cost views, over the series above and the canonical engine counters.
RECORDING_RULES = {
    "forge:cost_usd_per_hour": "sum by (team, cost_center, replica, model) (forge_gpu_price_usd_per_hour * on (replica) "
                               "group_left () forge_replica_gpus)",
    "forge:cost_usd_per_1m_output_tokens": "sum by (team, cost_center, model) (increase(forge_cost_usd_total[1h])) "
                                           "/ (sum by (team, cost_center, model) "
                                           "(increase(forge_generation_tokens_total[1h])) / 1e6)",
    "forge:cost_usd_per_1m_input_tokens": "sum by (team, cost_center, model) (increase(forge_cost_usd_total[1h])) "
                                          "/ (sum by (team, cost_center, model) "
                                          "(increase(forge_prompt_tokens_total[1h])) / 1e6)",
    "forge:cost_usd_per_successful_request": "sum by (team, cost_center, model) (increase(forge_cost_usd_total[1h])) "
                                             "/ sum by (team, cost_center, model) "
                                             "(increase(forge_requests_total{outcome=\"success\"}[1h]))",
    # GPUs of replicas that ran no request in the last 5 minutes; idle GPU-hours over a day are
    # sum_over_time(forge:idle_gpus[1d:1m]) / 60. group_left keeps team/cost_center (a one-to-one `on` match
    # would keep only `replica`).
    "forge:idle_gpus": "sum by (team, cost_center, replica) (forge_replica_gpus * on (replica) group_left () "
                       "(max by (replica) (max_over_time(forge_requests_running[5m])) == bool 0))",
}


class CostCollector:
    def __init__(self, targets: list[Target], clock=time.monotonic):
        self.targets = [t for t in targets if t.kind == "engine" and t.cost is not None]
        self._clock = clock
        self._started = clock()

    def hours_elapsed(self) -> float:
        return max(0.0, self._clock() - self._started) / 3600.0

    def families(self) -> list[CanonicalFamily]:
        price = CanonicalFamily("forge_gpu_price_usd_per_hour", "gauge",
                                "USD per GPU-hour of the replica's accelerator (price_source says where from).")
        gpus = CanonicalFamily("forge_replica_gpus", "gauge", "GPUs one replica holds (deploy.yaml gpus_per_replica).")
        spent = CanonicalFamily("forge_cost_usd_total", "counter",
                                "USD accrued by the replica's GPUs since the exporter started.")
        budget = CanonicalFamily("forge_cost_budget_usd_per_1m_output_tokens", "gauge",
                                 "Budget in USD per million output tokens (deploy.yaml "
                                 "slo.cost_budget_usd_per_1m_output_tokens).")
        hours = self.hours_elapsed()
        for target in self.targets:
            cost = target.cost
            # Only configured labels: a label learned from the page would change the series after the first scrape.
            owner = {"replica": target.name, **({"model": target.model} if target.model else {}),
                     **{k: v for k, v in target.labels.items() if k in ("team", "cost_center")}}
            key = tuple(sorted(owner.items()))
            price.series[tuple(sorted({**owner, "accelerator": cost.accelerator, "capacity": cost.capacity,
                                       "price_source": cost.price_source}.items()))] = cost.price_per_gpu_hour
            gpus.series[key] = float(cost.gpus)
            spent.series[key] = cost.price_per_gpu_hour * cost.gpus * hours
            if cost.budget_usd_per_1m_output_tokens is not None:
                budget.series[key] = cost.budget_usd_per_1m_output_tokens
        return [f for f in (price, gpus, spent, budget) if f.series]
