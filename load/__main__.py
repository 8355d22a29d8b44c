"""`python -m forge.load ...`: the same commands as `forge load ...`."""

from forge.load.cli import app

app(prog_name="forge load")
