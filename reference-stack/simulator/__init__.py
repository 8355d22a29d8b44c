"""Forge's engine simulator: an OpenAI-compatible server that behaves, and exposes /metrics, like vLLM 0.32.

For scale and fault tests and the quick demo path; it never replaces real vLLM in end-to-end tests.
`serve(port=0, **options)` runs one in a `with` block (see server.serve); the CLI is
`python -m forge.reference_stack.simulator --help`. Details: README.md next to this file.
"""

from forge.reference_stack.simulator.config import SimulatorConfig
from forge.reference_stack.simulator.server import serve

__all__ = ["SimulatorConfig", "serve"]
