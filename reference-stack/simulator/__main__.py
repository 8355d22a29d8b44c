"""`python -m forge.reference_stack.simulator --host 127.0.0.1 --port 8000 [--engines N] [...]`.

Every SimulatorConfig field is a flag (`--max-num-seqs 64`, `--no-enable-prefix-caching`). Prints
"forge simulator listening on URL ..." once it accepts requests. SIGINT/SIGTERM stop it (in-flight requests end
as with vLLM's --shutdown-timeout; the process then exits by that signal, as uvicorn does); the crash fault exits
with status 1; bad flags or a port that is taken exit 2 with a one-line error.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields

from forge.reference_stack.simulator.config import SimulatorConfig
from forge.reference_stack.simulator.server import run

EXIT_BAD_INPUT = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m forge.reference_stack.simulator",
                                description="Forge engine simulator: vLLM 0.32's API and /metrics, simulated.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0 = any free one; the ready line names it)")
    for f in fields(SimulatorConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                           help=f.metadata["help"])
        else:
            p.add_argument(flag, dest=f.name, type=type(default), default=None, metavar=type(default).__name__.upper(),
                           help=f"{f.metadata['help']} (default {default})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    options = {name: value for name, value in args.items() if value is not None}
    # A real crash ends the process when it is one engine; with many, only the crashed engine fails.
    options.setdefault("crash_action", "exit" if options.get("engines", 1) == 1 else "fail")
    try:
        config = SimulatorConfig(**options)
    except ValueError as exc:
        sys.stderr.write(f"forge simulator: error: {exc}\n")
        return EXIT_BAD_INPUT
    try:
        return run(host, port, config)
    except OSError as exc:
        sys.stderr.write(f"forge simulator: error: {exc}\n")
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
