"""Accelerator catalog: memory, bandwidth, compute, default prices and efficiency per GPU id (forge/data/hardware.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path


from forge.yamlio import safe_load

_CATALOG = Path(__file__).with_name("data") / "hardware.yaml"


@dataclass(frozen=True)
class Efficiency:
    """How much of the datasheet a serving engine gets (roofline derating); `forge capacity calibrate` refits these."""

    compute: dict[str, float]        # per precision: share of dense peak TFLOPS a whole engine step reaches
    memory_bandwidth: float          # share of peak bandwidth reached by a decode step (weights + KV reads)
    step_overhead_seconds: float     # scheduler + launch time per engine step that neither roofline covers
    request_overhead_seconds: float  # API server per request: HTTP, tokenize, detokenize (added to TTFT)
    collective_latency_seconds: float  # latency of one small all-reduce over the interconnect (TP > 1)


@dataclass(frozen=True)
class GPU:
    id: str
    vendor: str
    memory_bytes: int
    memory_bandwidth_bytes_per_second: float
    tflops: dict[str, float]
    interconnect_kind: str
    interconnect_bytes_per_second: float
    price_per_gpu_hour: dict[str, float]
    source: str
    efficiency: Efficiency = field(default_factory=lambda: Efficiency({"bf16": 0.5}, 0.8, 0.002, 0.005, 10e-6))
    sources: dict[str, str] = field(default_factory=dict)  # per-figure sources (memory, bandwidth, price, ...)
    # Spot reclaims per instance-hour (AWS Spot Instance Advisor bands; hardware.yaml says which and how converted).
    spot_interruptions_per_hour: float | None = None

    def supports(self, precision: str) -> bool:
        return precision in self.tflops

    def achievable_flops(self, precision: str) -> float:
        """Dense peak × compute efficiency for a precision, FLOP/s (16-bit where the precision is missing)."""
        if precision not in self.tflops:
            precision = "bf16"
        return self.tflops[precision] * 1e12 * self.efficiency.compute.get(precision, self.efficiency.compute["bf16"])

    def price(self, capacity: str) -> float:
        """Default USD per GPU-hour for a capacity type; reserved falls back to on-demand when not listed."""
        return self.price_per_gpu_hour.get(capacity, self.price_per_gpu_hour["on-demand"])


@cache
def catalog() -> dict[str, GPU]:
    raw = safe_load(_CATALOG.read_text())["gpus"]
    out: dict[str, GPU] = {}
    for gid, g in raw.items():
        eff = g["efficiency"]
        out[gid] = GPU(
            id=gid,
            vendor=g["vendor"],
            memory_bytes=int(float(g["memory_bytes"])),
            memory_bandwidth_bytes_per_second=float(g["memory_bandwidth_bytes_per_second"]),
            tflops={k: float(v) for k, v in g["tflops"].items()},
            interconnect_kind=g["interconnect"]["kind"],
            interconnect_bytes_per_second=float(g["interconnect"]["bytes_per_second"]),
            price_per_gpu_hour={k: float(v) for k, v in g["price_per_gpu_hour"].items()},
            source=g["source"],
            efficiency=Efficiency(
                compute={k: float(v) for k, v in eff["compute"].items()},
                memory_bandwidth=float(eff["memory_bandwidth"]),
                step_overhead_seconds=float(eff["step_overhead_seconds"]),
                request_overhead_seconds=float(eff["request_overhead_seconds"]),
                collective_latency_seconds=float(eff["collective_latency_seconds"]),
            ),
            sources={k: str(v) for k, v in (g.get("sources") or {}).items()},
            spot_interruptions_per_hour=(float(g["spot_interruptions_per_hour"])
                                         if g.get("spot_interruptions_per_hour") is not None else None),
        )
    return out


def gpu_ids() -> list[str]:
    return list(catalog())


def get(gpu_id: str) -> GPU:
    return catalog()[gpu_id]
