"""What every Forge command does the same way: one-line errors on stderr, files written whole or not at all."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def error(message: str) -> None:
    """One line per problem on stderr, never a traceback."""
    sys.stderr.write(f"forge: error: {message}\n")


def write_atomic(path: Path, text: str) -> None:
    """Write then rename: an interrupted or failed run never leaves half a file where the last good one was."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
