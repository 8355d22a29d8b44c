"""Load generator performance against Forge's engine simulator (its own process, 127.0.0.1).

For each request rate: Forge's schedule lag p99 and the client CPU per 1,000 streamed requests; the highest rate with
lag p99 <= 2 ms is the figure of merit (issue 8). Where `.venv-vllm/bin/vllm` exists, `vllm bench serve` runs the same
shape at each rate for its CPU per 1,000 requests (it reports no schedule lag); GuideLLM likewise when installed.
Prints a table; run: .venv/bin/python benchmarks/load_gen.py [--seconds 5] [--rates 5,10,20,40].
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from forge.reference_stack.simulator import serve

ROOT = Path(__file__).resolve().parent.parent
LAG_GOAL_S = 0.002
PROMPT_TOKENS, OUTPUT_TOKENS = 64, 32


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_forge(url: str, rate: float, seconds: float, workdir: Path) -> dict:
    out, summary = workdir / f"forge-{rate}.jsonl", workdir / f"forge-{rate}.json"
    before = _children_cpu()
    subprocess.run([sys.executable, "-m", "forge.load", "run", "--target", url, "--rate", str(rate), "--duration",
                    str(seconds), "--prompt-tokens", f"fixed:{PROMPT_TOKENS}", "--output-tokens", f"fixed:{OUTPUT_TOKENS}",
                    "--out", str(out), "--summary-json", str(summary), "--no-progress"],
                   check=True, stdout=subprocess.DEVNULL)
    cpu = _children_cpu() - before
    data = json.loads(summary.read_text())
    n = data["requests"]["scheduled"]
    return {"requests": n, "ok": data["requests"]["outcomes"]["ok"], "accounted": data["requests"]["accounted"],
            "lag_p99_ms": data["schedule_lag_s"]["p99"] * 1000, "cpu_s_per_1000": cpu / n * 1000}


def run_vllm_bench(url: str, rate: float, seconds: float, workdir: Path) -> dict | None:
    vllm = ROOT / ".venv-vllm" / "bin" / "vllm"
    if not vllm.exists():
        return None
    n = max(1, int(rate * seconds))
    before = _children_cpu()
    done = subprocess.run([str(vllm), "bench", "serve", "--base-url", url, "--model", "tiny", "--tokenizer", "gpt2",
                           "--dataset-name", "random", "--random-input-len", str(PROMPT_TOKENS), "--random-output-len",
                           str(OUTPUT_TOKENS), "--num-prompts", str(n), "--request-rate", str(rate), "--ignore-eos",
                           "--save-result", "--result-dir", str(workdir), "--result-filename", f"vllm-{rate}.json",
                           "--disable-tqdm"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cpu = _children_cpu() - before
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1][:120] if done.stderr.strip() else "failed"}
    data = json.loads((workdir / f"vllm-{rate}.json").read_text())
    return {"requests": n, "ok": data["completed"], "cpu_s_per_1000": cpu / n * 1000}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rates", default="5,10,20,40,80")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    print(f"shape: prompt {PROMPT_TOKENS} tokens, output {OUTPUT_TOKENS} tokens (ignore_eos), Poisson arrivals, "
          f"{args.seconds:g} s per rate; simulator in its own process")
    print(f"{'rate':>6} | {'forge lag p99 ms':>16} {'forge CPU s/1k':>14} {'accounted':>9} | {'vllm CPU s/1k':>13}")
    best = None
    with serve(port=0, in_subprocess=True) as url, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for rate in rates:
            forge = run_forge(url, rate, args.seconds, workdir)
            vllm = run_vllm_bench(url, rate, args.seconds, workdir)
            if forge["lag_p99_ms"] <= LAG_GOAL_S * 1000:
                best = rate
            vllm_cell = ("not installed" if vllm is None else vllm.get("error") or f"{vllm['cpu_s_per_1000']:.2f}")
            print(f"{rate:>6g} | {forge['lag_p99_ms']:>16.2f} {forge['cpu_s_per_1000']:>14.2f} "
                  f"{str(forge['accounted']):>9} | {vllm_cell:>13}")
    print(f"highest rate with Forge schedule lag p99 <= {LAG_GOAL_S * 1000:g} ms: {best}")
    print("CPU s/1k is the whole client process per 1,000 requests, start-up and tokenizer calibration included "
          "(dominant at low rates).")
    print(f"GuideLLM: {'installed' if shutil.which('guidellm') else 'not installed here'} (not compared)")


if __name__ == "__main__":
    main()
