"""exporter.yaml (or deploy.yaml + target URLs) -> ExporterSettings, with one clear line per problem.

    listen: 127.0.0.1:9400          # loopback by default; name another address to expose it
    interval_seconds: 15
    timeout_seconds: 5              # per target, connect + whole body
    max_page_bytes: 10000000        # a page over this is refused while streaming
    deploy: deploy.yaml             # optional: team / cost_center / model / engine / price / GPU count from it
    labels: {team: search, cost_center: cc-42}      # added to every engine series (override deploy.yaml's)
    targets:
      - {url: "http://127.0.0.1:8000/metrics", replica: chat-0, engine: vllm, model: llama-8b}
    gpu: {mode: off}                # off | nvml | dcgm-exporter (with url:)
    cost: {price_per_gpu_hour: 3.78, gpus_per_replica: 1}   # overrides deploy.yaml's
    otlp:                           # optional: also push the signals as OTLP/HTTP metrics
      endpoint: http://127.0.0.1:4318              # POSTs to <endpoint>/v1/metrics
      interval_seconds: 60
      headers: {Authorization: "Bearer …"}         # sent as is, never logged
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from yarl import URL

from forge.catalog import get_catalog
from forge.errors import InputError
from forge.exporters.normalize import NormalizeError, _check_extra_labels
from forge.exporters.otlp import (DEFAULT_INTERVAL_SECONDS as OTLP_DEFAULT_INTERVAL_SECONDS,
                                  DEFAULT_SERVICE_NAME as OTLP_DEFAULT_SERVICE_NAME,
                                  DEFAULT_TIMEOUT_SECONDS as OTLP_DEFAULT_TIMEOUT_SECONDS, OtlpSettings, metrics_url,
                                  safe_url)
from forge.exporters.scrape import DEFAULT_MAX_PAGE_BYTES, DEFAULT_TIMEOUT_SECONDS

DEFAULT_LISTEN = "127.0.0.1:9400"
MAX_CONFIG_BYTES = 1_000_000
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")     # an HTTP token (RFC 9110)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_url(value: str) -> str:
    try:
        url = URL(value)
    except (ValueError, TypeError):
        raise ValueError(f"{value!r} is not a URL — write e.g. http://127.0.0.1:8000/metrics") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{value!r} is not an http(s) URL with a host — write e.g. http://127.0.0.1:8000/metrics")
    if url.path in ("", "/") and not url.query_string:
        # A bare host:port means its /metrics, as Prometheus's default metrics_path does.
        return value.rstrip("/") + "/metrics"
    return value


class TargetModel(_Strict):
    url: str
    replica: str = Field(min_length=1, max_length=200)
    engine: str | None = Field(None, description="vllm, sglang, tgi, trtllm or triton_trtllm; detected when absent.")
    model: str | None = Field(None, min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(v)

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, v: str | None) -> str | None:
        engines = [d.id for d in get_catalog().dialects.values() if d.engine]
        if v is not None and v not in engines:
            raise ValueError(f"unknown engine {v!r} — use one of {', '.join(engines)}, or leave it out to detect it")
        return v


class GpuModel(_Strict):
    mode: Literal["off", "nvml", "dcgm-exporter"] = "off"
    url: str | None = Field(None, description="dcgm-exporter's /metrics URL (mode dcgm-exporter).")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v)


class CostModel(_Strict):
    price_per_gpu_hour: float | None = Field(None, ge=0, le=10_000)
    gpus_per_replica: int | None = Field(None, gt=0, le=1024)
    accelerator: str | None = Field(None, description="GPU catalog id, for the catalog's default price.")
    capacity: Literal["on-demand", "spot", "reserved"] = "on-demand"


class OtlpModel(_Strict):
    endpoint: str = Field(description="OTLP/HTTP receiver, e.g. http://127.0.0.1:4318 (/v1/metrics is added).")
    interval_seconds: float = Field(OTLP_DEFAULT_INTERVAL_SECONDS, ge=0.1, le=3600)
    timeout_seconds: float = Field(OTLP_DEFAULT_TIMEOUT_SECONDS, gt=0, le=300)
    headers: dict[str, str] = Field(default_factory=dict)
    service_name: str = Field(OTLP_DEFAULT_SERVICE_NAME, min_length=1, max_length=200)
    compression: Literal["none", "gzip"] = "none"

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        try:
            url = URL(v)
        except (ValueError, TypeError):
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise ValueError("not an http(s) URL with a host — write e.g. http://127.0.0.1:4318")
        if url.user or url.password:
            raise ValueError("credentials in the URL — put them in otlp.headers (e.g. Authorization), which are "
                             "never logged")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            # Messages name the header, never its value: it may be a credential.
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name!r} is not an HTTP token — use letters, digits and -")
            if any(c in value for c in "\r\n\x00"):
                raise ValueError(f"header {name}: the value has a line break or NUL — remove it")
            if name.lower() in ("content-type", "content-encoding", "content-length"):
                raise ValueError(f"header {name}: set by the exporter itself — remove it")
        return v


class ExporterConfigModel(_Strict):
    listen: str = DEFAULT_LISTEN
    interval_seconds: float = Field(15.0, ge=0.1, le=3600)
    timeout_seconds: float = Field(DEFAULT_TIMEOUT_SECONDS, gt=0, le=300)
    max_page_bytes: int = Field(DEFAULT_MAX_PAGE_BYTES, ge=1024, le=1_000_000_000)
    max_concurrency: int = Field(100, ge=1, le=10_000)
    deploy: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    targets: list[TargetModel] = Field(default_factory=list)
    gpu: GpuModel = Field(default_factory=GpuModel)
    cost: CostModel | None = None
    otlp: OtlpModel | None = None


# ----------------------------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class Cost:
    """What one replica costs: USD per GPU-hour times GPUs; `price_source` says where the price came from."""

    price_per_gpu_hour: float
    gpus: int
    accelerator: str
    capacity: str
    price_source: str   # "deploy.yaml", "exporter.yaml" or "catalog default"
    budget_usd_per_1m_output_tokens: float | None = None   # deploy.yaml slo.cost_budget_usd_per_1m_output_tokens


@dataclass(frozen=True)
class Target:
    url: str
    name: str                       # the replica for engines; self-metrics carry it as `target`
    kind: str = "engine"            # engine | dcgm
    engine: str | None = None       # a dialect id; None = detect
    model: str | None = None
    labels: dict[str, str] = field(default_factory=dict)   # team, cost_center, … added to every series
    cost: Cost | None = None


@dataclass(frozen=True)
class ExporterSettings:
    targets: list[Target]
    listen_host: str = "127.0.0.1"
    listen_port: int = 9400
    interval_seconds: float = 15.0
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES
    max_concurrency: int = 100
    gpu_mode: str = "off"
    otlp: OtlpSettings | None = None    # push to an OTLP/HTTP receiver as well (None: Prometheus only)

    def engine_targets(self) -> list[Target]:
        return [t for t in self.targets if t.kind == "engine"]


def parse_listen(value: str, where: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); InputError naming the place otherwise."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"{where}: {value!r} is not host:port — write e.g. {DEFAULT_LISTEN}")
    return host, int(port)


def _place(where: str, index: Any, loc: tuple[Any, ...]) -> str:
    line, col = index.locate(loc) if index is not None else (None, None)
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    return f"{where}:{line}:{col}: {dotted}" if line else f"{where}: {dotted}"


def _validation_messages(exc: ValidationError, where: str, index: Any) -> list[str]:
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key — see the keys at the top of exporters/config.py or docs/exporter.md"
        elif err["type"] == "missing":
            msg = "required key is missing — add it"
        out.append(f"{_place(where, index, loc)}: {msg}")
    return out


def _cost_for(deploy: Any | None, override: CostModel | None, where: str) -> Cost | None:
    """Price and GPU count: exporter.yaml's cost section wins, then deploy.yaml, then the hardware catalog."""
    from forge import hardware

    hw = deploy.hardware if deploy is not None and deploy.hardware is not None else None
    accelerator = (override.accelerator if override and override.accelerator else None) or (hw.gpu if hw else None)
    capacity = (override.capacity if override and override.accelerator else None) or (hw.capacity if hw else "on-demand")
    gpus = (override.gpus_per_replica if override else None) or (hw.gpus_per_replica if hw else None)
    if override and override.price_per_gpu_hour is not None:
        price, source = override.price_per_gpu_hour, "exporter.yaml"
    elif hw and hw.price_per_gpu_hour is not None:
        price, source = hw.price_per_gpu_hour, "deploy.yaml"
    elif accelerator:
        if accelerator not in hardware.gpu_ids():
            raise InputError(f"{where}: cost.accelerator: unknown GPU {accelerator!r} — known: "
                             f"{', '.join(hardware.gpu_ids())}")
        price, source = hardware.get(accelerator).price(capacity), "catalog default"
    else:
        return None  # nothing says what a GPU costs: no cost series rather than a made-up price
    if gpus is None:
        raise InputError(f"{where}: cost: a price but no GPU count — set cost.gpus_per_replica or "
                         f"deploy.yaml hardware.gpus_per_replica")
    if not math.isfinite(price):
        raise InputError(f"{where}: cost.price_per_gpu_hour: not a finite number")
    budget = deploy.slo.cost_budget_usd_per_1m_output_tokens if deploy is not None and deploy.slo else None
    return Cost(price_per_gpu_hour=price, gpus=gpus, accelerator=accelerator or "unknown", capacity=capacity,
                price_source=source, budget_usd_per_1m_output_tokens=budget)


def _deploy_labels(deploy: Any) -> dict[str, str]:
    meta = deploy.metadata
    return {k: v for k, v in (("team", meta.team), ("cost_center", meta.cost_center)) if v}


def _check_labels(labels: dict[str, str], where: str) -> None:
    try:
        _check_extra_labels(labels, get_catalog())
    except NormalizeError as exc:
        raise InputError(f"{where}: {exc.messages[0]}") from None


def settings_from_model(model: ExporterConfigModel, where: str, index: Any = None,
                        base_dir: Path | None = None) -> ExporterSettings:
    from forge.loader import load

    deploy = None
    if model.deploy:
        path = Path(model.deploy)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        deploy = load(path).deployment
    gpu_mode = model.gpu.mode
    if gpu_mode == "dcgm-exporter" and not model.gpu.url:
        raise InputError(f"{_place(where, index, ('gpu', 'mode'))}: mode dcgm-exporter needs gpu.url "
                         f"(dcgm-exporter's /metrics, e.g. http://127.0.0.1:9400/metrics)")
    if not model.targets and gpu_mode == "off":
        raise InputError(f"{_place(where, index, ('targets',))}: no targets and no GPU collector — list at least "
                         f"one engine under targets: (url, replica)")
    host, port = parse_listen(model.listen, _place(where, index, ("listen",)))
    base_labels = {**(_deploy_labels(deploy) if deploy else {}), **model.labels}
    _check_labels(base_labels, _place(where, index, ("labels",)))
    cost = _cost_for(deploy, model.cost, _place(where, index, ("cost",)))
    targets: list[Target] = []
    seen: dict[str, int] = {}
    for i, t in enumerate(model.targets):
        if t.replica in seen:
            raise InputError(f"{_place(where, index, ('targets', i, 'replica'))}: replica {t.replica!r} is also "
                             f"targets[{seen[t.replica]}]'s — every target needs its own replica name")
        seen[t.replica] = i
        labels = {**base_labels, **t.labels}
        _check_labels(labels, _place(where, index, ("targets", i, "labels")))
        targets.append(Target(url=t.url, name=t.replica, engine=t.engine or (deploy.engine.name if deploy else None),
                              model=t.model or (deploy.model.name if deploy else None), labels=labels, cost=cost))
    if gpu_mode == "dcgm-exporter":
        targets.append(Target(url=model.gpu.url, name="dcgm-exporter", kind="dcgm", engine="dcgm"))
    return ExporterSettings(targets=targets, listen_host=host, listen_port=port,
                            interval_seconds=model.interval_seconds, timeout_seconds=model.timeout_seconds,
                            max_page_bytes=model.max_page_bytes, max_concurrency=model.max_concurrency,
                            gpu_mode=gpu_mode, otlp=otlp_settings(model.otlp) if model.otlp else None)


def otlp_settings(model: OtlpModel) -> OtlpSettings:
    return OtlpSettings(endpoint=metrics_url(model.endpoint), interval_seconds=model.interval_seconds,
                        timeout_seconds=model.timeout_seconds, headers=dict(model.headers),
                        service_name=model.service_name, compression=model.compression)


def with_otlp_endpoint(settings: ExporterSettings, endpoint: str, where: str = "--otlp-endpoint"
                       ) -> ExporterSettings:
    """`--otlp-endpoint URL`: replaces the config's endpoint (its headers and interval stay) or turns OTLP on."""
    current = settings.otlp
    raw = {"endpoint": endpoint}
    if current is not None:
        raw.update(interval_seconds=current.interval_seconds, timeout_seconds=current.timeout_seconds,
                   headers=current.headers, service_name=current.service_name, compression=current.compression)
    try:
        model = OtlpModel.model_validate(raw)
    except ValidationError as exc:
        try:
            shown = safe_url(endpoint)       # never echo credentials given in the URL
        except (ValueError, TypeError):
            shown = repr(endpoint)
        raise InputError([f"{where} {shown}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]) \
            from None
    return ExporterSettings(**{**settings.__dict__, "otlp": otlp_settings(model)})


def load_config(path: str | Path) -> ExporterSettings:
    """Read exporter.yaml; InputError with `file:line:col: key: problem — fix` lines."""
    from forge.loader import parse_yaml

    p = Path(path)
    where = str(p)
    if not p.is_file():
        raise InputError(f"{where}: no such file — check the path (see docs/exporter.md for an example)")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise InputError(f"{where}: over {MAX_CONFIG_BYTES:,} bytes — is this the exporter config?")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where}: byte {exc.start} is not UTF-8 — save the file as UTF-8 text") from None
    data, index = parse_yaml(text, where)
    if not isinstance(data, dict):
        raise InputError(f"{where}:1:1: expected a mapping with targets: [...], got "
                         f"{'an empty file' if data is None else type(data).__name__}")
    try:
        model = ExporterConfigModel.model_validate(data)
    except ValidationError as exc:
        raise InputError(_validation_messages(exc, where, index)) from None
    return settings_from_model(model, where, index, base_dir=p.parent)


def settings_from_deploy(deploy_path: str | Path, target_urls: list[str], *, listen: str = DEFAULT_LISTEN,
                         gpu_mode: str | None = None, dcgm_url: str | None = None,
                         interval_seconds: float = 15.0, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                         ) -> ExporterSettings:
    """`--deploy deploy.yaml --target URL ...`: replicas named <deployment>-0, -1, …; the rest from deploy.yaml."""
    from forge.loader import load

    deployment = load(deploy_path).deployment
    if gpu_mode is None:
        gpu_mode = {"nvml": "nvml", "dcgm-exporter": "dcgm-exporter"}.get(
            deployment.observability.gpu_metrics if deployment.observability else "none", "off")
        if gpu_mode == "dcgm-exporter" and not dcgm_url:
            raise InputError(f"{deploy_path}: observability.gpu_metrics is dcgm-exporter — pass --dcgm-url "
                             f"(dcgm-exporter's /metrics) or --gpu off")
    raw = {"listen": listen, "interval_seconds": interval_seconds, "timeout_seconds": timeout_seconds,
           "deploy": str(deploy_path), "gpu": {"mode": gpu_mode, "url": dcgm_url},
           "targets": [{"url": url, "replica": f"{deployment.metadata.name}-{i}"} for i, url in enumerate(target_urls)]}
    try:
        model = ExporterConfigModel.model_validate(raw)
    except ValidationError as exc:
        messages = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            place = f"--target {target_urls[loc[1]]}" if loc[:1] == ("targets",) else "--" + str(loc[0])
            messages.append(f"{place}: {err['msg'].removeprefix('Value error, ')}")
        raise InputError(messages) from None
    return settings_from_model(model, "--deploy/--target")
