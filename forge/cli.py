"""The `forge` command line. Exit codes: 0 ready / ok, 1 not ready, 2 bad input or usage.

The commands, their options and their help are the typer app of forge.cli_app. This module is the entry point: a
plain `forge readiness assess …` (what CI runs on every change) goes straight to forge.cli_assess without importing
typer, which would cost about as much as grading the file; every other command line goes to the typer app.
"""

from __future__ import annotations

import sys
from typing import Any

from forge.cli_assess import EXIT_BAD_INPUT, EXIT_NOT_READY, EXIT_READY  # noqa: F401 - the CLI's exit codes
from forge.console import error as _err
from forge.errors import InputError


def __getattr__(name: str) -> Any:
    # `from forge.cli import app` (tests' CliRunner, scripts): the typer app, imported on first use.
    if name in ("app", "readiness_app", "SUBAPPS"):
        from forge import cli_app

        return getattr(cli_app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _main_assess(kwargs: dict) -> None:
    """`forge readiness assess` without typer: the same command, errors and exit codes as through main_typer."""
    from forge.cli_assess import assess

    try:
        rc = assess(**kwargs)
    except InputError as exc:
        for m in exc.messages:
            _err(m)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:  # as typer's main loop answers it (exit 130, nothing printed)
        sys.exit(130)
    except EOFError:
        sys.stderr.write("\n")
        _err("interrupted")
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (`| head`): exit 1 quietly, as click does
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    sys.exit(rc)


def main_typer(argv: list[str] | None = None) -> None:
    """Any command line, through the typer app (forge.cli_app)."""
    try:  # typer >= 0.20 vendors click
        from typer._click.exceptions import ClickException
    except ImportError:  # pragma: no cover - older typer on the real click
        from click.exceptions import ClickException
    import typer

    from forge.cli_app import _mount_subapps, _usage_error, app

    _mount_subapps(sys.argv[1:] if argv is None else argv)
    try:
        # Not standalone: usage errors come back here to be printed as one line, not click's framed box.
        rc = app(args=argv, standalone_mode=False)
    except InputError as exc:
        for m in exc.messages:
            _err(m)
        sys.exit(EXIT_BAD_INPUT)
    except ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `forge` alone: typer has already printed the help
            sys.exit(exc.exit_code)
        _err(_usage_error(exc))
        sys.exit(EXIT_BAD_INPUT if exc.exit_code == 2 else exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _err("interrupted")
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)


def main() -> None:
    from forge.cli_assess import parse_assess_args

    kwargs = parse_assess_args(sys.argv[1:])
    if kwargs is not None:
        _main_assess(kwargs)
    main_typer()


if __name__ == "__main__":
    main()
