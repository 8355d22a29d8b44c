"""The names deploy.yaml may list under `observability.signals`, without loading the whole signal catalog.

A readiness check only needs those names, and parsing signals.yaml into the catalog costs about a tenth of a
one-file `forge readiness assess`. `forge/data/signal-aliases.json` is generated from signals.yaml
(`python -m forge.signal_index > forge/data/signal-aliases.json`; a test compares it with a fresh rendering) and
records the CRC-32 of the YAML it came from: if signals.yaml changes and the index is not regenerated, the
catalog itself is read, so a stale index can never give a wrong answer.
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

DATA = Path(__file__).parent / "data"
CATALOG_PATH = DATA / "signals.yaml"
INDEX_PATH = DATA / "signal-aliases.json"


def signal_aliases() -> set[str]:
    """The short signal names deploy.yaml may list (the catalog's `aliases`)."""
    try:
        index = json.loads(INDEX_PATH.read_text(encoding="utf-8"))
        if index.get("source_crc32") == zlib.crc32(CATALOG_PATH.read_bytes()):
            return set(index["aliases"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    from forge.catalog import signal_aliases as from_catalog

    return from_catalog()


def render() -> str:
    from forge.catalog import load_catalog

    aliases = sorted(load_catalog(CATALOG_PATH).aliases)
    document = {"generated_from": "forge/data/signals.yaml by `python -m forge.signal_index`",
                "source_crc32": zlib.crc32(CATALOG_PATH.read_bytes()), "aliases": aliases}
    return json.dumps(document, indent=1) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
