"""Memory and CPU of one simulator process serving many engines, idle and scraped.

    .venv/bin/python benchmarks/simulator_scale.py [--engines 1000] [--idle-s 10] [--rounds 3] [--concurrency 16]

Starts `python -m forge.reference_stack.simulator --engines N` on a free loopback port, then reports: start-up
time, RSS and CPU share while idle, then scrapes every /engines/{i}/metrics page `rounds` times (as a
Prometheus would, `concurrency` at a time) and reports per round scrape latency, pages per second, server CPU
per page and RSS. A 15 s scrape interval over N engines needs N/15 pages per second; the ratio to the measured
rate is printed. The load client runs on the same machine and takes its share of the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

import httpx

from forge.reference_stack.simulator.server import READY_LINE

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


async def scrape_all(url: str, engines: int, rounds: int, concurrency: int) -> tuple[list[float], int]:
    latencies: list[float] = []
    page_bytes = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(index: int) -> None:
            nonlocal page_bytes
            async with semaphore:
                started = time.perf_counter()
                response = await client.get(f"/engines/{index}/metrics")
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()
                page_bytes = len(response.content)

        for _ in range(rounds):
            await asyncio.gather(*(one(i) for i in range(engines)))
    return latencies, page_bytes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=int, default=1000)
    p.add_argument("--idle-s", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args()

    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "forge.reference_stack.simulator", "--port", "0",
                                "--engines", str(args.engines)], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        if not line.startswith(READY_LINE):
            print(f"simulator did not start: {line!r}", file=sys.stderr)
            return 1
        url = line[len(READY_LINE):].split()[0]
        startup_s = time.perf_counter() - started
        print(f"engines: {args.engines}   start-up to ready: {startup_s:.2f} s   (cores: {os.cpu_count()})")

        cpu_before, wall_before = cpu_s(process.pid), time.perf_counter()
        time.sleep(args.idle_s)
        idle_cpu = (cpu_s(process.pid) - cpu_before) / (time.perf_counter() - wall_before)
        print(f"idle: RSS {rss_mib(process.pid):.0f} MiB, CPU {100 * idle_cpu:.2f} % of one core "
              f"over {args.idle_s:.0f} s")

        # Round 1 renders every page (cold); later rounds find idle engines' pages unchanged (cached).
        for round_index in range(args.rounds):
            cpu_before, wall_before = cpu_s(process.pid), time.perf_counter()
            latencies, page_bytes = asyncio.run(scrape_all(url, args.engines, 1, args.concurrency))
            wall = time.perf_counter() - wall_before
            server_cpu = cpu_s(process.pid) - cpu_before
            rate = len(latencies) / wall
            quantiles = statistics.quantiles(latencies, n=100)
            needed = args.engines / 15
            print(f"scrape round {round_index + 1} ({'cold' if round_index == 0 else 'warm'}): {len(latencies)} pages "
                  f"({page_bytes / 1024:.1f} KiB each) in {wall:.2f} s = {rate:.0f} pages/s at concurrency "
                  f"{args.concurrency}; latency p50 {1e3 * quantiles[49]:.1f} ms, p99 {1e3 * quantiles[98]:.1f} ms; "
                  f"server CPU {1e3 * server_cpu / len(latencies):.2f} ms per page; RSS {rss_mib(process.pid):.0f} MiB; "
                  f"vs. 1000 engines at a 15 s interval ({needed:.0f} pages/s): x{rate / needed:.1f}")
    finally:
        process.terminate()
        process.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
