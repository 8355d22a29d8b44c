"""Readiness checks, one module per dimension. Importing this package registers them all."""

from forge.readiness.checks import (  # noqa: F401
    correctness,
    cost,
    deployment,
    observability,
    operations,
    performance,
    reliability,
    security,
)
