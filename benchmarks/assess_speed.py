"""How fast is `forge readiness assess`? Prints measured figures; goals from issue #3:

- one file, wall time including interpreter start-up: <= 3x `python -c "import pydantic"` and <= 0.5 s;
- 1,000 generated deploy files assessed in one call: <= 10 s (on the 2-core reference machine).

Usage: python benchmarks/assess_speed.py [--runs 7] [--files 1000]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "readiness" / "examples").glob("*.yaml"))


def wall(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return times


def generate_fleet(directory: Path, count: int) -> None:
    """Variations of the shipped examples: other replica counts, traffic, GPUs and TP sizes."""
    rng = random.Random(42)
    bases = [yaml.safe_load(p.read_text()) for p in EXAMPLES]
    gpus = ["H100-SXM-80GB", "H200-141GB", "A100-SXM-80GB", "B200", "H100-PCIe"]
    for i in range(count):
        d = yaml.safe_load(yaml.safe_dump(rng.choice(bases)))
        d["metadata"]["name"] = f"svc-{i:04d}"
        d["hardware"]["gpu"] = rng.choice(gpus)
        if "traffic" in d and d["traffic"].get("requests_per_second"):
            scale = rng.choice([0.5, 1, 2, 4])
            d["traffic"]["requests_per_second"] = {k: v * scale for k, v in d["traffic"]["requests_per_second"].items()}
        if d["hardware"].get("replicas"):
            d["hardware"]["replicas"]["max"] = d["hardware"]["replicas"]["max"] + rng.randint(0, 8)
        (directory / f"svc-{i:04d}.yaml").write_text(yaml.safe_dump(d, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()

    forge = [sys.executable, "-m", "forge.cli"]
    target = str(ROOT / "reference-stack" / "deploy.yaml")
    wall([sys.executable, "-c", "import pydantic"], 2)  # warm the page cache for both
    wall(forge + ["readiness", "assess", target, "--format", "json"], 2)
    pydantic_s = statistics.median(wall([sys.executable, "-c", "import pydantic"], args.runs))
    one_s = statistics.median(wall(forge + ["readiness", "assess", target, "--format", "json"], args.runs))
    print(f"python -c 'import pydantic'            median {pydantic_s * 1000:7.0f} ms  ({args.runs} runs)")
    print(f"forge readiness assess (1 file, json)  median {one_s * 1000:7.0f} ms  ({args.runs} runs)")
    print(f"ratio to import pydantic               {one_s / pydantic_s:7.2f}x   (goal <= 3x and <= 500 ms)")

    tmp = Path(tempfile.mkdtemp(prefix="forge-fleet-"))
    try:
        generate_fleet(tmp, args.files)
        start = time.perf_counter()
        proc = subprocess.run(forge + ["readiness", "assess", str(tmp), "--format", "json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        fleet_s = time.perf_counter() - start
        if proc.returncode not in (0, 1):
            sys.exit(f"fleet assessment failed: {proc.stderr.decode()[:500]}")
        print(f"forge readiness assess ({args.files} files)  {fleet_s:7.2f} s  "
              f"({fleet_s / args.files * 1000:.1f} ms per file; goal <= 10 s)")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
