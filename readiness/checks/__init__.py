"""Readiness checks, one module per dimension (drills: chaos-journal evidence, across dimensions). Importing this
package registers them all."""

from forge.readiness.checks import (  # noqa: F401
    correctness,
    cost,
    deployment,
    drills,
    live,  # live Prometheus evidence (--prometheus), across dimensions 2, 3 and 4
    observability,
    operations,
    performance,
    reliability,
    security,
)
