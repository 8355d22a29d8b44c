"""How fast is `forge readiness assess`? Prints measured figures; goals from issue #3:

- one file, wall time including interpreter start-up: <= 3x `python -c "import pydantic"` and <= 0.5 s;
- 1,000 generated deploy files assessed in one call: <= 10 s (on the 2-core reference machine).

Wall times on a shared VM swing by 2x with the neighbours' load. `--instructions` also counts the instructions each
one-file step executes under valgrind (callgrind), which do not depend on the load: the same ratio, reproducibly,
plus where the instructions go (interpreter, pydantic, PyYAML, the schema, the checks, the report).

Usage: python benchmarks/assess_speed.py [--runs 7] [--files 1000] [--instructions]
"""

from __future__ import annotations

import argparse
import os
import re
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


# Bytecode caches are written and used, as on a user's machine: with PYTHONDONTWRITEBYTECODE set (as in some CI
# shells), every module edited since its cache was written would be compiled again on every run and counted.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def wall(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, cwd=ROOT, env=ENV)
        times.append(time.perf_counter() - start)
    return times


# Each step's program does what the one before did, and one thing more; the difference is that thing's cost.
INSTRUCTION_STEPS = [
    ("interpreter start-up", "pass"),
    ("import pydantic (the reference)", "import pydantic"),
    ("+ pydantic.BaseModel", "from pydantic import BaseModel"),
    ("+ PyYAML", "from pydantic import BaseModel; import yaml"),
    ("+ deploy.yaml schema classes", "import yaml; import forge.schema"),
    ("+ its validator built", "import yaml, forge.schema as s; s.Deployment.model_rebuild()"),
    ("+ file read, parsed, validated", "from forge.loader import load; load('reference-stack/deploy.yaml')"),
    ("+ checks and capacity model run", "from forge.loader import load; import forge.readiness.assess as a; "
                                        "a.assess_loaded(load('reference-stack/deploy.yaml'))"),
    ("+ JSON report (no CLI framework)", "from pathlib import Path; from forge.readiness.assess import assess_many; "
                                         "from forge.readiness.reports import render; "
                                         "render(assess_many([Path('reference-stack/deploy.yaml')]), 'json')"),
]


def instructions(args: list[str]) -> int:
    """Instructions executed by `python ARGS` (valgrind --tool=callgrind), bytecode caches warm."""
    env = ENV
    subprocess.run([sys.executable, *args], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, *args],
                          env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found = re.search(r"Collected\s*:\s*([\d,]+)", proc.stderr)
    if not found:
        sys.exit(f"valgrind gave no instruction count: {proc.stderr[-300:]}")
    return int(found.group(1).replace(",", ""))


def print_instruction_breakdown() -> None:
    if not shutil.which("valgrind"):
        sys.exit("--instructions needs valgrind (apt-get install valgrind)")
    reference = None
    previous = 0
    print("instructions executed (valgrind callgrind; independent of machine load):")
    for label, code in INSTRUCTION_STEPS:
        count = instructions(["-c", code])
        reference = count if reference is None and "reference" in label else reference
        ratio = f"{count / reference:5.2f}x" if reference else "      "
        print(f"  {label:36s} {count / 1e6:8.0f} M  (+{(count - previous) / 1e6:6.0f} M)  {ratio}")
        previous = count
    cli = instructions(["-m", "forge.cli", "readiness", "assess", "reference-stack/deploy.yaml", "--format", "json"])
    print(f"  {'forge readiness assess (the CLI)':36s} {cli / 1e6:8.0f} M  (+{(cli - previous) / 1e6:6.0f} M)  "
          f"{cli / reference:5.2f}x   (goal <= 3x)")


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
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions per step under valgrind (slow: about 5 minutes)")
    args = parser.parse_args()
    if args.instructions:
        print_instruction_breakdown()

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
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=ENV)
        fleet_s = time.perf_counter() - start
        if proc.returncode not in (0, 1):
            sys.exit(f"fleet assessment failed: {proc.stderr.decode()[:500]}")
        print(f"forge readiness assess ({args.files} files)  {fleet_s:7.2f} s  "
              f"({fleet_s / args.files * 1000:.1f} ms per file; goal <= 10 s)")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
