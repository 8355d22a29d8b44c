"""GPU collector through NVML (nvidia-ml-py), under dcgm-exporter's field and label names.

Dashboards read DCGM_FI_DEV_* with labels gpu, UUID, device, modelName, Hostname whether a dcgm-exporter
sidecar runs (pass-through: a `dcgm` target in the engine collector) or this collector reads NVML itself.
Every name comes from the catalog's GPU section; a field this GPU or driver doesn't support is left out, never
exported as 0. On a machine without an NVIDIA driver the collector says so once and exports no DCGM series,
only `forge_gpu_collector_up{mode="nvml"} 0` with the reason.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

from forge.catalog import get_catalog
from forge.exporters.normalize import CanonicalFamily

log = logging.getLogger("forge.exporter.gpu")
MIB = 1024 * 1024


@dataclass
class GpuReading:
    labels: dict[str, str]
    values: dict[str, float] = field(default_factory=dict)


class NvmlCollector:
    """`sample()` reads every GPU (call it from a worker thread: NVML calls block); `families()` renders the last."""

    mode = "nvml"

    def __init__(self, nvml: Any | None = None, hostname: str | None = None):
        self.hostname = hostname or socket.gethostname()
        self.available = False
        self.reason = ""                 # a fixed token when unavailable: no_library, no_driver, no_gpu, nvml_error
        self.detail = ""
        self.readings: list[GpuReading] = []
        self.unsupported: set[tuple[str, str]] = set()    # (UUID, field) this GPU/driver doesn't provide
        self._nvml = nvml
        self._handles: list[Any] = []
        self._static: list[dict[str, str]] = []
        self._events = None
        self._last_xid: dict[int, float] = {}
        self._start()

    # ------------------------------------------------------------------------------------------- set-up

    def _start(self) -> None:
        if self._nvml is None:
            try:
                import pynvml  # nvidia-ml-py
            except ImportError:
                return self._unavailable("no_library", "nvidia-ml-py is not installed — pip install nvidia-ml-py")
            self._nvml = pynvml
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            reason = "no_driver" if type(exc).__name__ in ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded") \
                else "nvml_error"
            return self._unavailable(reason, f"NVML could not start ({exc}) — no NVIDIA GPU or driver on this machine")
        try:
            count = nvml.nvmlDeviceGetCount()
            if count == 0:
                return self._unavailable("no_gpu", "NVML started but sees no GPU")
            for index in range(count):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                self._handles.append(handle)
                self._static.append(self._identity(index, handle))
        except nvml.NVMLError as exc:
            return self._unavailable("nvml_error", f"NVML failed listing GPUs: {exc}")
        self._register_xid_events()
        self.available = True
        log.info("GPU collector (nvml): %d GPU(s): %s", len(self._handles),
                 ", ".join(s["modelName"] for s in self._static))

    def _unavailable(self, reason: str, detail: str) -> None:
        self.available, self.reason, self.detail = False, reason, detail
        log.warning("GPU collector (nvml): %s; exporting no GPU series", detail)  # once: set-up runs once

    def _identity(self, index: int, handle: Any) -> dict[str, str]:
        nvml = self._nvml
        name = nvml.nvmlDeviceGetName(handle)
        uuid = nvml.nvmlDeviceGetUUID(handle)
        try:
            device = f"nvidia{nvml.nvmlDeviceGetMinorNumber(handle)}"
        except nvml.NVMLError:
            device = f"nvidia{index}"
        as_text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731 — older bindings give bytes
        return {"gpu": str(index), "UUID": as_text(uuid), "device": device, "modelName": as_text(name),
                "Hostname": self.hostname}

    def _register_xid_events(self) -> None:
        nvml = self._nvml
        try:
            self._events = nvml.nvmlEventSetCreate()
            for handle in self._handles:
                nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, self._events)
            self._last_xid = {i: 0.0 for i in range(len(self._handles))}   # 0: no XID since we started watching
        except nvml.NVMLError as exc:
            self._events = None
            self._last_xid = {}
            log.info("GPU collector (nvml): XID events unavailable (%s); DCGM_FI_DEV_XID_ERRORS not exported", exc)

    def close(self) -> None:
        if self.available:
            try:
                if self._events is not None:
                    self._nvml.nvmlEventSetFree(self._events)
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self.available = False

    # ------------------------------------------------------------------------------------------- reading

    def _drain_xid_events(self) -> None:
        nvml = self._nvml
        if self._events is None:
            return
        while True:
            try:
                event = nvml.nvmlEventSetWait_v2(self._events, 0)
            except nvml.NVMLError_Timeout:
                return
            except nvml.NVMLError as exc:
                log.info("GPU collector (nvml): reading XID events failed: %s", exc)
                return
            for i, handle in enumerate(self._handles):
                if self._same_device(event.device, handle, i):
                    self._last_xid[i] = float(event.eventData)
                    log.warning("GPU %s: XID %d", self._static[i]["UUID"], event.eventData)

    def _same_device(self, event_device: Any, handle: Any, index: int) -> bool:
        try:
            return self._nvml.nvmlDeviceGetIndex(event_device) == index
        except Exception:  # noqa: BLE001 — fall back to comparing handles
            return event_device == handle

    def _fields(self) -> list[tuple[str, Callable[[Any], float]]]:
        n = self._nvml
        reasons = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            n.nvmlDeviceGetCurrentClocksThrottleReasons
        return [
            ("DCGM_FI_DEV_GPU_UTIL", lambda h: n.nvmlDeviceGetUtilizationRates(h).gpu),
            ("DCGM_FI_DEV_MEM_COPY_UTIL", lambda h: n.nvmlDeviceGetUtilizationRates(h).memory),
            ("DCGM_FI_DEV_FB_USED", lambda h: n.nvmlDeviceGetMemoryInfo(h).used // MIB),
            ("DCGM_FI_DEV_FB_FREE", lambda h: n.nvmlDeviceGetMemoryInfo(h).free // MIB),
            ("DCGM_FI_DEV_POWER_USAGE", lambda h: n.nvmlDeviceGetPowerUsage(h) / 1000.0),        # mW -> W
            ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", lambda h: n.nvmlDeviceGetTotalEnergyConsumption(h)),   # mJ
            ("DCGM_FI_DEV_GPU_TEMP", lambda h: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
            ("DCGM_FI_DEV_MEMORY_TEMP", lambda h: self._field_value(h, n.NVML_FI_DEV_MEMORY_TEMP)),
            ("DCGM_FI_DEV_SM_CLOCK", lambda h: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
            ("DCGM_FI_DEV_MEM_CLOCK", lambda h: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM)),
            ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", lambda h: reasons(h)),
            # NVML counts violation time in ns; DCGM's fields are in µs.
            ("DCGM_FI_DEV_POWER_VIOLATION",
             lambda h: n.nvmlDeviceGetViolationStatus(h, n.NVML_PERF_POLICY_POWER).violationTime / 1000.0),
            ("DCGM_FI_DEV_THERMAL_VIOLATION",
             lambda h: n.nvmlDeviceGetViolationStatus(h, n.NVML_PERF_POLICY_THERMAL).violationTime / 1000.0),
            ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", lambda h: n.nvmlDeviceGetTotalEccErrors(
                h, n.NVML_MEMORY_ERROR_TYPE_CORRECTED, n.NVML_VOLATILE_ECC)),
            ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", lambda h: n.nvmlDeviceGetTotalEccErrors(
                h, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC)),
            ("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", lambda h: n.nvmlDeviceGetTotalEccErrors(
                h, n.NVML_MEMORY_ERROR_TYPE_CORRECTED, n.NVML_AGGREGATE_ECC)),
            ("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", lambda h: n.nvmlDeviceGetTotalEccErrors(
                h, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_AGGREGATE_ECC)),
            ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", lambda h: n.nvmlDeviceGetRemappedRows(h)[0]),
            ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", lambda h: n.nvmlDeviceGetRemappedRows(h)[1]),
            ("DCGM_FI_DEV_ROW_REMAP_FAILURE", lambda h: float(bool(n.nvmlDeviceGetRemappedRows(h)[3]))),
            ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", lambda h: n.nvmlDeviceGetPcieReplayCounter(h)),
        ]

    def _field_value(self, handle: Any, field_id: int) -> float:
        """One nvmlDeviceGetFieldValues entry as a number; NVMLError when the GPU doesn't report it."""
        n = self._nvml
        value = n.nvmlDeviceGetFieldValues(handle, [field_id])[0]
        if value.nvmlReturn != n.NVML_SUCCESS:
            raise n.NVMLError(value.nvmlReturn)
        kind = value.valueType
        union = value.value
        return float({n.NVML_VALUE_TYPE_DOUBLE: union.dVal, n.NVML_VALUE_TYPE_UNSIGNED_INT: union.uiVal,
                      n.NVML_VALUE_TYPE_UNSIGNED_LONG: union.ulVal,
                      n.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: union.ullVal,
                      n.NVML_VALUE_TYPE_SIGNED_LONG_LONG: union.sllVal}.get(kind, union.ullVal))

    def sample(self) -> None:
        """Read every field of every GPU once; unsupported fields are remembered and skipped from then on."""
        if not self.available:
            return
        nvml = self._nvml
        self._drain_xid_events()
        readings = []
        for i, handle in enumerate(self._handles):
            reading = GpuReading(labels=self._static[i])
            uuid = reading.labels["UUID"]
            for name, read in self._fields():
                if (uuid, name) in self.unsupported:
                    continue
                try:
                    reading.values[name] = float(read(handle))
                except nvml.NVMLError as exc:
                    # NotSupported (e.g. ECC off, no HBM sensor) is permanent; other errors retry next cycle.
                    if type(exc).__name__ in ("NVMLError_NotSupported", "NVMLError_FunctionNotFound",
                                              "NVMLError_NoPermission"):
                        self.unsupported.add((uuid, name))
                        log.info("GPU %s: %s not available (%s); left out", uuid, name, exc)
                    else:
                        log.warning("GPU %s: reading %s failed: %s", uuid, name, exc)
            if i in self._last_xid:
                reading.values["DCGM_FI_DEV_XID_ERRORS"] = self._last_xid[i]
            readings.append(reading)
        self.readings = readings

    # ------------------------------------------------------------------------------------------- output

    def families(self) -> list[CanonicalFamily]:
        status = CanonicalFamily("forge_gpu_collector_up", "gauge",
                                 "1 when the GPU collector reads GPUs; 0 with forge_gpu_collector_error_info's reason.")
        status.series[(("mode", self.mode),)] = 1.0 if self.available else 0.0
        out = [status]
        if not self.available:
            error = CanonicalFamily("forge_gpu_collector_error_info", "gauge",
                                    "Why the GPU collector exports no GPU series (the value is always 1).")
            error.series[(("mode", self.mode), ("reason", self.reason))] = 1.0
            return out + [error]
        signals = get_catalog().signals
        by_name: dict[str, CanonicalFamily] = {}
        for reading in self.readings:
            key = tuple(sorted(reading.labels.items()))
            for name, value in reading.values.items():
                signal = signals[name]
                family = by_name.setdefault(name, CanonicalFamily(name, signal.type, signal.help))
                family.series[key] = value
        return out + list(by_name.values())
