"""What every Forge command does the same way: one-line errors on stderr, files written whole or not at all."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable


def error(message: str) -> None:
    """One line per problem on stderr, never a traceback."""
    sys.stderr.write(f"forge: error: {message}\n")


def one_line_input_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """A command's InputError becomes one line per message and exit 2, also when its sub-app runs on its own."""
    import typer

    from forge.errors import InputError

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            for message in exc.messages:
                error(message)
            raise typer.Exit(2) from None

    return wrapper


def write_atomic(path: Path, text: str) -> None:
    """Write then rename: an interrupted or failed run never leaves half a file where the last good one was."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
