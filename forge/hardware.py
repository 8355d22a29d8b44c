"""Accelerator catalog: memory, bandwidth, compute and default prices per GPU id (forge/data/hardware.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

_CATALOG = Path(__file__).with_name("data") / "hardware.yaml"


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

    def supports(self, precision: str) -> bool:
        return precision in self.tflops


@cache
def catalog() -> dict[str, GPU]:
    raw = yaml.safe_load(_CATALOG.read_text())["gpus"]
    out: dict[str, GPU] = {}
    for gid, g in raw.items():
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
        )
    return out


def gpu_ids() -> list[str]:
    return list(catalog())


def get(gpu_id: str) -> GPU:
    return catalog()[gpu_id]
