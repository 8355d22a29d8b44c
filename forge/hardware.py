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
    # Host time per running sequence per step that the roofline does not cover: sampling, detokenizing and streaming
    # one event per sequence. Negligible beside a GPU step (0 in the catalog); on the CPU backend the API server and
    # the engine share the cores, so it is what makes decode steps grow with the batch (fitted by calibration).
    sequence_overhead_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"compute": dict(self.compute), "memory_bandwidth": self.memory_bandwidth,
                "step_overhead_seconds": self.step_overhead_seconds,
                "sequence_overhead_seconds": self.sequence_overhead_seconds,
                "request_overhead_seconds": self.request_overhead_seconds,
                "collective_latency_seconds": self.collective_latency_seconds}


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
                sequence_overhead_seconds=float(eff.get("sequence_overhead_seconds", 0.0)),
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


# ---------------------------------------------------------------- calibrated efficiency factors
CALIBRATION_FILE_FORMAT = "forge.capacity.calibration-factors/v1"


@dataclass(frozen=True)
class Calibration:
    """Efficiency factors fitted by `forge capacity calibrate --save FILE` for one GPU id, with their provenance."""

    path: Path
    gpu: str
    efficiency: Efficiency
    engine: str            # e.g. "vllm 0.32.0", as the engine reported it
    created: str           # ISO 8601 date-time of the fit
    provenance: dict       # shapes, request counts, residual errors, host load (free-form, shown, not used)


def _calibration_error(path: Path, problem: str) -> Exception:
    from forge.errors import InputError

    return InputError(f"hardware.calibration {path}: {problem} — write it with `forge capacity calibrate --deploy "
                      "deploy.yaml --target URL --save FILE`, or drop hardware.calibration")


def load_calibration(path: Path) -> Calibration:
    """Read and check a calibration file; a bad or missing file raises InputError (one line naming the fix)."""
    import math

    if not path.is_file():
        raise _calibration_error(path, "no such file")
    try:
        raw = safe_load(path.read_text())
    except Exception as exc:  # noqa: BLE001 — any YAML or decoding problem is the file's
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _calibration_error(path, f"not YAML ({first})") from None
    if not isinstance(raw, dict) or raw.get("format") != CALIBRATION_FILE_FORMAT:
        raise _calibration_error(path, f"not a calibration file (format must be {CALIBRATION_FILE_FORMAT})")
    gpu_id = raw.get("gpu")
    if gpu_id not in catalog():
        raise _calibration_error(path, f"gpu {gpu_id!r} is not a catalog id")
    eff = raw.get("efficiency")
    if not isinstance(eff, dict):
        raise _calibration_error(path, "efficiency: missing")

    def number(key: str, value, high: float, share: bool = False) -> float:
        """A finite number in 0..high; a share (efficiency) must also be above 0."""
        if value is None:
            raise _calibration_error(path, f"efficiency.{key}: missing")
        try:
            figure = float(value)
        except (TypeError, ValueError):
            raise _calibration_error(path, f"efficiency.{key}: {value!r} is not a number") from None
        if not math.isfinite(figure) or figure < 0 or figure > high or (share and figure == 0):
            raise _calibration_error(path, f"efficiency.{key}: {value!r} must be {'in (0, 1]' if share else f'0..{high:g}'}")
        return figure

    compute = eff.get("compute")
    if not isinstance(compute, dict) or not compute:
        raise _calibration_error(path, "efficiency.compute: missing (a share of dense peak per precision)")
    base = catalog()[gpu_id].efficiency
    efficiency = Efficiency(
        compute={**base.compute, **{str(k): number(f"compute.{k}", v, 1.0, share=True) for k, v in compute.items()}},
        memory_bandwidth=number("memory_bandwidth", eff.get("memory_bandwidth"), 1.0, share=True),
        step_overhead_seconds=number("step_overhead_seconds", eff.get("step_overhead_seconds"), 10.0),
        request_overhead_seconds=number("request_overhead_seconds", eff.get("request_overhead_seconds"), 60.0),
        collective_latency_seconds=number("collective_latency_seconds",
                                          eff.get("collective_latency_seconds", base.collective_latency_seconds), 1.0),
        sequence_overhead_seconds=number("sequence_overhead_seconds", eff.get("sequence_overhead_seconds", 0.0), 1.0),
    )
    engine = raw.get("engine") or {}
    engine_text = " ".join(str(engine.get(k)) for k in ("name", "version") if engine.get(k)) if isinstance(engine, dict) \
        else str(engine)
    return Calibration(path=path, gpu=gpu_id, efficiency=efficiency, engine=engine_text or "unknown engine",
                       created=str(raw.get("created") or "unknown date"),
                       provenance=raw.get("fit") if isinstance(raw.get("fit"), dict) else {})
