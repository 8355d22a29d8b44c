"""NVML GPU collector: real readings on a GPU machine (marked `gpu`), and its rules where there is no GPU.

The `gpu` test runs on the device machine (see docs/exporter.md for the command and the recorded page). Where no
NVIDIA driver is present it is skipped with that reason, unless FORGE_REQUIRE_GPU=1 (then it fails).
Set FORGE_GPU_PAGE_OUT=<file> to keep the scraped page.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from forge.catalog import get_catalog
from forge.exporters.gpu import NvmlCollector
from forge.exporters.normalize import render_families

DCGM_LABELS = {"gpu", "UUID", "device", "modelName", "Hostname"}


def page_of(collector: NvmlCollector) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(render_families(collector.families())):
        for s in family.samples:
            # The parser adds _total to counters; DCGM's names don't have it (as dcgm-exporter writes them).
            name = family.name if s.name == family.name + "_total" else s.name
            out.setdefault(name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _driver_present() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 — any failure means no usable GPU here
        return False


# ----------------------------------------------------------------------------------------------- real GPU

@pytest.mark.gpu
@pytest.mark.timeout(120)
@pytest.mark.skipif(not _driver_present() and os.environ.get("FORGE_REQUIRE_GPU") != "1",
                    reason="needs an NVIDIA GPU and driver: run on the device machine (docs/exporter.md)")
def test_nvml_collector_reads_real_values_from_the_gpu():
    import pynvml

    collector = NvmlCollector()
    try:
        assert collector.available, collector.detail
        collector.sample()
        page = page_of(collector)
        if os.environ.get("FORGE_GPU_PAGE_OUT"):
            Path(os.environ["FORGE_GPU_PAGE_OUT"]).write_text(render_families(collector.families()))
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
        total_mib = pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024)
    finally:
        collector.close()

    assert page["forge_gpu_collector_up"][(("mode", "nvml"),)] == 1.0
    gpu0 = next(k for k in page["DCGM_FI_DEV_FB_USED"] if dict(k)["gpu"] == "0")
    labels = dict(gpu0)
    assert set(labels) == DCGM_LABELS
    assert labels["modelName"] == name and "NVIDIA" in name
    assert labels["UUID"].startswith("GPU-") and labels["device"].startswith("nvidia")
    used, free = page["DCGM_FI_DEV_FB_USED"][gpu0], page["DCGM_FI_DEV_FB_FREE"][gpu0]
    assert total_mib > 1024 and 0 < used + free <= total_mib
    assert page["DCGM_FI_DEV_POWER_USAGE"][gpu0] > 1.0            # watts: an idle data-centre GPU draws tens
    assert 5 < page["DCGM_FI_DEV_GPU_TEMP"][gpu0] < 110
    assert page["DCGM_FI_DEV_SM_CLOCK"][gpu0] > 0
    assert 0 <= page["DCGM_FI_DEV_GPU_UTIL"][gpu0] <= 100
    # Every exported name is a catalog GPU signal; nothing outside the catalog leaks out.
    gpu_names = {s.name for s in get_catalog().signals_in_scope("gpu")}
    assert {n for n in page if n.startswith("DCGM_")} <= gpu_names


# ----------------------------------------------------------------------------------------------- no GPU

def test_without_a_driver_the_collector_says_so_and_exports_no_gpu_series(caplog):
    import pynvml

    class NoDriver:
        NVMLError = pynvml.NVMLError

        @staticmethod
        def nvmlInit():
            raise pynvml.NVMLError_LibraryNotFound(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    with caplog.at_level("WARNING"):
        collector = NvmlCollector(nvml=NoDriver)
        collector.sample()
        collector.sample()
    page = page_of(collector)
    assert not any(n.startswith("DCGM_") for n in page)
    assert page["forge_gpu_collector_up"] == {(("mode", "nvml"),): 0.0}
    assert page["forge_gpu_collector_error_info"] == {(("mode", "nvml"), ("reason", "no_driver")): 1.0}
    said = [r.getMessage() for r in caplog.records if "GPU collector" in r.getMessage()]
    assert len(said) == 1 and "no NVIDIA GPU or driver" in said[0]    # once, clearly


def test_on_this_machine_the_collector_exports_either_real_gpus_or_nothing():
    collector = NvmlCollector()
    available = collector.available
    try:
        collector.sample()
        page = page_of(collector)
    finally:
        collector.close()
    if available:
        assert page["DCGM_FI_DEV_FB_USED"]
    else:
        assert not any(n.startswith("DCGM_") for n in page) and collector.reason


# ----------------------------------------------------------------------------------------------- mapping

def fake_nvml(*, ecc_supported: bool):
    """NVML as the bindings present it, with known readings in NVML's own units (mW, bytes, ns)."""
    import pynvml

    events = [types.SimpleNamespace(device="h0", eventData=79, eventType=pynvml.nvmlEventTypeXidCriticalError)]

    def ecc(handle, kind, counter):
        if not ecc_supported:
            raise pynvml.NVMLError_NotSupported(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return {(pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC): 3,
                (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC): 1}.get((kind, counter), 0)

    def wait(event_set, timeout_ms):
        if events:
            return events.pop()
        raise pynvml.NVMLError_Timeout(pynvml.NVML_ERROR_TIMEOUT)

    def field_values(handle, ids):
        union = types.SimpleNamespace(dVal=0.0, uiVal=0, ulVal=0, ullVal=0, sllVal=0)
        union.uiVal = 71
        return [types.SimpleNamespace(nvmlReturn=pynvml.NVML_SUCCESS, valueType=pynvml.NVML_VALUE_TYPE_UNSIGNED_INT,
                                      value=union)]

    fake = types.SimpleNamespace(**{name: getattr(pynvml, name) for name in dir(pynvml)
                                    if name.startswith(("NVML_", "NVMLError", "nvmlEventType"))})
    fake.nvmlInit = lambda: None
    fake.nvmlShutdown = lambda: None
    fake.nvmlDeviceGetCount = lambda: 1
    fake.nvmlDeviceGetHandleByIndex = lambda i: "h0"
    fake.nvmlDeviceGetIndex = lambda h: 0
    fake.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    fake.nvmlDeviceGetUUID = lambda h: "GPU-0000"
    fake.nvmlDeviceGetMinorNumber = lambda h: 3
    fake.nvmlEventSetCreate = lambda: "events"
    fake.nvmlEventSetFree = lambda s: None
    fake.nvmlDeviceRegisterEvents = lambda h, kinds, s: None
    fake.nvmlEventSetWait_v2 = wait
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=87, memory=40)
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=80 * 2**30, used=30 * 2**30 + 5,
                                                                   free=50 * 2**30 - 5)
    fake.nvmlDeviceGetPowerUsage = lambda h: 612_431                      # mW
    fake.nvmlDeviceGetTotalEnergyConsumption = lambda h: 9_000_000        # mJ
    fake.nvmlDeviceGetTemperature = lambda h, sensor: 61
    fake.nvmlDeviceGetFieldValues = field_values
    fake.nvmlDeviceGetClockInfo = lambda h, clock: {pynvml.NVML_CLOCK_SM: 1980, pynvml.NVML_CLOCK_MEM: 2619}[clock]
    fake.nvmlDeviceGetCurrentClocksEventReasons = lambda h: 4
    fake.nvmlDeviceGetViolationStatus = lambda h, policy: types.SimpleNamespace(violationTime=5_000_000)   # ns
    fake.nvmlDeviceGetTotalEccErrors = ecc
    fake.nvmlDeviceGetRemappedRows = lambda h: (2, 1, 0, 0)
    fake.nvmlDeviceGetPcieReplayCounter = lambda h: 0
    return fake


def test_nvml_readings_map_to_dcgm_fields_in_dcgm_units():
    collector = NvmlCollector(nvml=fake_nvml(ecc_supported=True), hostname="node-1")
    collector.sample()
    page = page_of(collector)
    key = (("Hostname", "node-1"), ("UUID", "GPU-0000"), ("device", "nvidia3"), ("gpu", "0"),
           ("modelName", "NVIDIA H100 80GB HBM3"))
    value = {name: series[key] for name, series in page.items() if key in series}
    assert value["DCGM_FI_DEV_GPU_UTIL"] == 87 and value["DCGM_FI_DEV_MEM_COPY_UTIL"] == 40
    assert value["DCGM_FI_DEV_FB_USED"] == 30 * 1024 and value["DCGM_FI_DEV_FB_FREE"] == 50 * 1024 - 1   # MiB
    assert value["DCGM_FI_DEV_POWER_USAGE"] == pytest.approx(612.431)                                   # W
    assert value["DCGM_FI_DEV_POWER_VIOLATION"] == 5000                                                 # µs
    assert value["DCGM_FI_DEV_MEMORY_TEMP"] == 71 and value["DCGM_FI_DEV_GPU_TEMP"] == 61
    assert value["DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"] == 4
    assert value["DCGM_FI_DEV_ECC_SBE_VOL_TOTAL"] == 3 and value["DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"] == 1
    assert value["DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS"] == 2
    assert value["DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS"] == 1
    assert value["DCGM_FI_DEV_ROW_REMAP_FAILURE"] == 0
    assert value["DCGM_FI_DEV_XID_ERRORS"] == 79                # the last XID event, not a count
    gpu_names = {s.name for s in get_catalog().signals_in_scope("gpu")}
    assert {n for n in page if n.startswith("DCGM_")} <= gpu_names


def test_fields_the_gpu_does_not_support_are_left_out_not_zero():
    collector = NvmlCollector(nvml=fake_nvml(ecc_supported=False), hostname="node-1")
    collector.sample()
    collector.sample()
    page = page_of(collector)
    assert not any(n.startswith("DCGM_FI_DEV_ECC") for n in page)
    assert page["DCGM_FI_DEV_GPU_UTIL"] and ("GPU-0000", "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL") in collector.unsupported
