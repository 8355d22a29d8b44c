"""Exporter at scale: N vLLM-size targets (tests/fixtures/metrics/vllm-0.32.txt, ~600 lines) scraped and normalized
per cycle, side by side with Prometheus scraping the same N targets in the same run.

    .venv/bin/python benchmarks/exporter_scale.py                      # 1,000 targets, 3 cycles, with Prometheus
    .venv/bin/python benchmarks/exporter_scale.py --targets 200 --no-prometheus

Prints: exporter wall and CPU seconds per cycle, its RSS, and Prometheus' CPU seconds per 15 s scrape round
(from /proc, the `prometheus` binary from Debian's package) and the ratio. Goals (issue 6): a full cycle under
15 s on one core, RSS <= 300 MB, CPU per cycle within 3x of Prometheus'. Targets are served by a separate
process on 127.0.0.1 so their cost isn't counted as the exporter's.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "tests" / "fixtures" / "metrics" / "vllm-0.32.txt").read_text(encoding="utf-8")
GOAL_CYCLE_S, GOAL_RSS_MB, GOAL_CPU_RATIO = 15.0, 300.0, 3.0
TICKS = os.sysconf("SC_CLK_TCK")


def serve_pages(count: int, port_out, stop) -> None:
    from forge.exporters.pageserver import PageServer

    with PageServer() as server:
        for i in range(count):
            server.route(f"/t/{i}/metrics", text=PAGE)
        port_out.put(server.port)
        stop.wait()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS   # utime + stime


async def run_exporter(port: int, count: int, cycles: int) -> list[tuple[float, float]]:
    from forge.exporters.config import ExporterSettings, Target
    from forge.exporters.server import ExporterService

    targets = [Target(url=f"http://127.0.0.1:{port}/t/{i}/metrics", name=f"r{i}", engine="vllm",
                      labels={"team": "bench"}) for i in range(count)]
    settings = ExporterSettings(targets=targets, listen_port=0, timeout_seconds=30, max_concurrency=100)
    out = []
    async with ExporterService(settings) as service:
        for _ in range(cycles):
            wall, cpu = time.perf_counter(), time.process_time()
            await service.collect_once()
            page = service.render()   # what one Prometheus scrape of the exporter costs, counted in the cycle
            out.append((time.perf_counter() - wall, time.process_time() - cpu))
        up = sum(1 for s in service.engines.states.values() if s.up)
        print(f"exporter: {up}/{count} targets up; exported page {len(page) / 1e6:.1f} MB, "
              f"{page.count(chr(10)):,} lines")
    return out


def run_prometheus(port: int, count: int, rounds: int) -> float | None:
    binary = shutil.which("prometheus")
    if binary is None:
        print("prometheus: not installed (Debian package `prometheus`); no comparison")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        groups = "\n".join(f"      - targets: ['127.0.0.1:{port}']\n        labels: {{__metrics_path__: /t/{i}/metrics}}"
                           for i in range(count))
        config = Path(tmp) / "prometheus.yml"
        config.write_text(f"global: {{scrape_interval: 15s, scrape_timeout: 10s}}\nscrape_configs:\n"
                          f"  - job_name: bench\n    static_configs:\n{groups}\n")
        process = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
                                    "--web.listen-address=127.0.0.1:0", "--log.level=error"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(20)            # start-up and the first (spread-out) round, not counted
            start = cpu_seconds_of(process.pid)
            time.sleep(15 * rounds)
            return (cpu_seconds_of(process.pid) - start) / rounds
        finally:
            process.terminate()
            process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--no-prometheus", action="store_true")
    args = parser.parse_args()
    ports, stop = multiprocessing.Queue(), multiprocessing.Event()
    server = multiprocessing.Process(target=serve_pages, args=(args.targets, ports, stop), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=60)
        print(f"{args.targets} targets of {PAGE.count(chr(10))} lines ({len(PAGE) / 1e3:.0f} KB) on 127.0.0.1:{port}; "
              f"{os.cpu_count()} cores")
        base_rss = rss_mb()
        cycles = asyncio.run(run_exporter(port, args.targets, args.cycles))
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        steady = cycles[1:] or cycles    # the first cycle also opens every connection
        wall = sum(c[0] for c in steady) / len(steady)
        cpu = sum(c[1] for c in steady) / len(steady)
        print(f"exporter: cycle wall {wall:.2f} s, CPU {cpu:.2f} s (first cycle {cycles[0][0]:.2f} s wall, "
              f"{cycles[0][1]:.2f} s CPU); RSS peak {peak_rss:.0f} MB (interpreter + imports {base_rss:.0f} MB)")
        print(f"goal: cycle under {GOAL_CYCLE_S:g} s on one core: {'met' if cpu < GOAL_CYCLE_S else 'NOT met'}; "
              f"RSS <= {GOAL_RSS_MB:g} MB: {'met' if peak_rss <= GOAL_RSS_MB else 'NOT met'}")
        if not args.no_prometheus:
            prom = run_prometheus(port, args.targets, args.cycles)
            if prom:
                ratio = cpu / prom
                print(f"prometheus: CPU {prom:.2f} s per 15 s round of {args.targets} scrapes; exporter/prometheus "
                      f"= {ratio:.1f}x (goal <= {GOAL_CPU_RATIO:g}x: {'met' if ratio <= GOAL_CPU_RATIO else 'NOT met'})")
    finally:
        stop.set()
        server.join(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
