"""Load generators side by side against Forge's engine simulator (its own process, 127.0.0.1), issue 8.

Per tool and request rate, measured the same way for each:
- schedule lag: actual minus intended send time of every request. Forge: its own records (`schedule_lag_s`).
  `vllm bench serve`: its benchmark module (vllm/benchmarks/serve.py of `.venv-vllm`) runs unchanged in a driver
  process that reads each intended time from the schedule `get_request` computed (`start_ts + delay_ts[i]`) and the
  actual one from the request function's `start_time`, both "the request coroutine began", as Forge stamps it;
- CPU per 1,000 streamed requests: the client process's CPU from first dispatch to the last response (Forge's
  `meta.client_cpu_s`, the driver's process time around vLLM's `benchmark()`), and the whole process including
  start-up (vLLM's imports are the bulk of its figure);
- requests accounted for: Forge's `requests.accounted`; vLLM: completed + failed == sent, every send matched to its
  intended time.
Same shape for both: Poisson arrivals at the rate, prompt 64 / output 32 tokens, ignore_eos, streamed completions.
The machine is shared, so each rate is repeated (--repeats) and ranges are printed; the highest rate counts when the
median p99 of its repeats is within 2 ms. GuideLLM: only when importable here (it is not installed; see docs/load.md).
Run: .venv/bin/python benchmarks/load_gen.py [--seconds 4] [--rates 10,20,40,80] [--repeats 2] [--no-vllm]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from forge.reference_stack.simulator import serve

ROOT = Path(__file__).resolve().parent.parent
LAG_GOAL_S = 0.002
PROMPT_TOKENS, OUTPUT_TOKENS = 64, 32
TOKENIZER_DIR = ROOT / ".forge" / "models" / "tiny-llama"  # the tiny model's tokenizer: vLLM's random prompts

# Runs inside .venv-vllm: vLLM's own benchmark, untouched except for two observers (its schedule generator and its
# request functions are wrapped, not replaced). argv: the `vllm bench serve` arguments. Prints one JSON line.
VLLM_DRIVER = r'''
import json, sys, time
from vllm.benchmarks import serve
from vllm.utils.argparse_utils import FlexibleArgumentParser

intended = {}   # id(prompt) -> [intended send, perf_counter clock], in the order get_request yielded them
lags, failed_errors = [], []
original_get_request = serve.get_request

async def observed_get_request(*args, **kwargs):
    generator = original_get_request(*args, **kwargs)
    async for item in generator:
        local = generator.ag_frame.f_locals  # vLLM's precomputed schedule: start_ts (wall clock) + delay_ts[i]
        wall_due = local["start_ts"] + local["delay_ts"][local["request_index"]]
        intended.setdefault(id(item[0].prompt), []).append(time.perf_counter() - (time.time() - wall_due))
        yield item

def observe(request_func):
    async def observed(request_func_input, session, pbar=None):
        output = await request_func(request_func_input=request_func_input, session=session, pbar=pbar)
        due = intended.get(id(request_func_input.prompt))
        if due:  # the warm-up request ran before the schedule started: not a scheduled send
            lags.append(output.start_time - due.pop(0))
        return output
    return observed

serve.get_request = observed_get_request
for name in list(serve.ASYNC_REQUEST_FUNCS):
    serve.ASYNC_REQUEST_FUNCS[name] = observe(serve.ASYNC_REQUEST_FUNCS[name])
original_benchmark, run_cpu = serve.benchmark, {}

async def measured_benchmark(*args, **kwargs):
    before = time.process_time()
    try:
        return await original_benchmark(*args, **kwargs)
    finally:
        run_cpu["s"] = time.process_time() - before

serve.benchmark = measured_benchmark
parser = FlexibleArgumentParser()
serve.add_cli_args(parser)
result = serve.main(parser.parse_args(sys.argv[1:]))
print("VLLM_DRIVER_RESULT " + json.dumps({"lags": lags, "completed": result["completed"],
      "failed": result.get("failed", 0), "unmatched": sum(len(v) for v in intended.values()),
      "run_cpu_s": run_cpu["s"]}))
'''


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = 0.99 * (len(ordered) - 1)  # linear between closest ranks, as Forge's summary computes it
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def run_forge(url: str, rate: float, seconds: float, workdir: Path) -> dict:
    out, summary = workdir / f"forge-{rate}.jsonl", workdir / f"forge-{rate}.json"
    before = _children_cpu()
    subprocess.run([sys.executable, "-m", "forge.load", "run", "--target", url, "--rate", str(rate), "--duration",
                    str(seconds), "--prompt-tokens", f"fixed:{PROMPT_TOKENS}", "--output-tokens", f"fixed:{OUTPUT_TOKENS}",
                    "--out", str(out), "--summary-json", str(summary), "--no-progress"],
                   check=True, stdout=subprocess.DEVNULL)
    process_cpu = _children_cpu() - before
    data = json.loads(summary.read_text())
    n = data["requests"]["scheduled"]
    return {"requests": n, "ok": data["requests"]["outcomes"]["ok"], "accounted": data["requests"]["accounted"],
            "lag_p99_ms": data["schedule_lag_s"]["p99"] * 1000, "run_cpu_s_per_1000": data["meta"]["client_cpu_s"] / n * 1000,
            "process_cpu_s_per_1000": process_cpu / n * 1000}


def run_vllm_bench(url: str, rate: float, seconds: float, workdir: Path) -> dict | None:
    python = ROOT / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        return None
    n = max(1, int(rate * seconds))
    before = _children_cpu()
    done = subprocess.run([str(python), "-c", VLLM_DRIVER, "--base-url", url, "--model", "tiny", "--tokenizer",
                           str(TOKENIZER_DIR), "--dataset-name", "random", "--random-input-len", str(PROMPT_TOKENS),
                           "--random-output-len", str(OUTPUT_TOKENS), "--num-prompts", str(n), "--request-rate",
                           str(rate), "--ignore-eos", "--disable-tqdm", "--seed", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"})
    process_cpu = _children_cpu() - before
    line = next((x for x in done.stdout.splitlines() if x.startswith("VLLM_DRIVER_RESULT ")), None)
    if done.returncode != 0 or line is None:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        return {"error": tail[-1][:120] if tail else f"exit {done.returncode}"}
    data = json.loads(line.split(" ", 1)[1])
    lags = data["lags"]
    accounted = data["completed"] + data["failed"] == n == len(lags) and data["unmatched"] == 0
    return {"requests": n, "ok": data["completed"], "accounted": accounted,
            "lag_p99_ms": _p99(lags) * 1000 if lags else float("nan"),
            "run_cpu_s_per_1000": data["run_cpu_s"] / n * 1000, "process_cpu_s_per_1000": process_cpu / n * 1000}


def _span(values: list[float], fmt: str = ".2f") -> str:
    low, high = min(values), max(values)
    return f"{low:{fmt}}" if len(values) == 1 or f"{low:{fmt}}" == f"{high:{fmt}}" else f"{low:{fmt}}-{high:{fmt}}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rates", default="10,20,40,80")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-vllm", action="store_true", help="Forge only")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    tools = ["forge"] + ([] if args.no_vllm else ["vllm bench serve"])
    runners = {"forge": run_forge, "vllm bench serve": run_vllm_bench}
    print(f"shape: Poisson, prompt {PROMPT_TOKENS} / output {OUTPUT_TOKENS} tokens (ignore_eos), streamed completions, "
          f"{args.seconds:g} s per run, {args.repeats} repeats; simulator in its own process; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at start")
    runs: dict[tuple[str, float], list[dict]] = {}
    with serve(port=0, in_subprocess=True) as url, tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for rate in rates:
                for tool in tools:  # alternating, so both see the same machine conditions
                    result = runners[tool](url, rate, args.seconds, Path(tmp))
                    runs.setdefault((tool, rate), []).append(result or {"error": "not installed"})
    print(f"{'tool':<17} {'rate':>5} | {'lag p99 ms':>13} {'run CPU s/1k':>13} {'process CPU s/1k':>16} {'accounted':>9}")
    best: dict[str, float | None] = {tool: None for tool in tools}
    for tool in tools:
        for rate in rates:
            results = runs[(tool, rate)]
            errors = [r["error"] for r in results if "error" in r]
            if errors:
                print(f"{tool:<17} {rate:>5g} | {errors[0]}")
                continue
            p99s = [r["lag_p99_ms"] for r in results]
            if statistics.median(p99s) <= LAG_GOAL_S * 1000:
                best[tool] = max(best[tool] or 0.0, rate)
            print(f"{tool:<17} {rate:>5g} | {_span(p99s):>13} {_span([r['run_cpu_s_per_1000'] for r in results]):>13} "
                  f"{_span([r['process_cpu_s_per_1000'] for r in results]):>16} "
                  f"{str(all(r['accounted'] for r in results)):>9}")
    for tool in tools:
        print(f"{tool}: highest rate with median schedule lag p99 <= {LAG_GOAL_S * 1000:g} ms: {best[tool]}")
    print(f"GuideLLM: {'installed (not driven here)' if shutil.which('guidellm') else 'not installed here'}")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
