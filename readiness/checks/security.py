"""Dimension 7 — security & compliance: who can call it, what it was built from, what it may leak."""

from __future__ import annotations

from typing import Any

from forge.readiness.checks import _sections as s
from forge.readiness.registry import check, not_applicable, passed, violated

SENSITIVE = ("confidential", "restricted")


@check("SEC-001", "security", "critical", "Confidential data has a threat model",
       rationale="""An LLM endpoint over confidential data has new attack surface (prompt injection, data
       exfiltration through outputs, training-data leakage, logs full of prompts). Without a threat model
       nobody decided which of these matter.""",
       remediation="Write the threat model and link it in security.threat_model.",
       path="security.threat_model")
def threat_model(ctx):
    sec = s.security(ctx)
    if sec.data_classification not in SENSITIVE and not sec.pii:
        return not_applicable("no confidential data declared")
    if not sec.threat_model:
        return violated(f"{sec.data_classification or 'PII'} data without a threat model",
                        data_classification=sec.data_classification, pii=sec.pii)
    return passed("threat model linked")


@check("SEC-002", "security", "high", "Model weights are signed or verified",
       rationale="""Weights are executable supply chain: a swapped file changes behaviour invisibly (backdoors,
       poisoned outputs). Pin a digest and verify it, or verify a signature, before loading.""",
       remediation="Set model.weights.sha256 and verify it at load (security.weights_verified), or sign them.",
       path="model.weights")
def weights_verified(ctx):
    w = ctx.d.model.weights
    signed = bool(w and w.signed)
    if not signed and not s.security(ctx).weights_verified:
        return violated("weights neither signed nor verified at load", signed=signed, weights_verified=False)
    if s.security(ctx).weights_verified and not (w and w.sha256) and not signed:
        return violated("weights_verified but no sha256 to verify against", warn=True)
    return passed("weights signed or verified")


@check("SEC-003", "security", "critical", "The endpoint requires authentication",
       rationale="""An unauthenticated inference endpoint is free GPU time for anyone who finds it and a data
       leak if prompts carry context.""",
       remediation="Put authentication in front of the engine (security.authn: oidc, mtls or api-key).",
       path="security.authn")
def authn(ctx):
    sec = s.security(ctx)
    if sec.authn in (None, "none"):
        if not s.is_prod(ctx):
            return violated(f"no authentication ({ctx.d.metadata.environment})", warn=True, authn=sec.authn)
        return violated("no authentication on a production endpoint", authn=sec.authn)
    return passed(f"authentication: {sec.authn}")


@check("SEC-004", "security", "high", "Network policy restricts who reaches the engine",
       rationale="""Engines expose admin-ish endpoints (/metrics, LoRA loading, sleep/wake on vLLM) besides the
       API; only the gateway and the monitoring system should reach them.""",
       remediation="Apply a NetworkPolicy (gateway and Prometheus only) and set security.network_policy: true.",
       path="security.network_policy")
def network_policy(ctx):
    if not s.security(ctx).network_policy:
        return violated("no network policy")
    return passed("network policy applied")


@check("SEC-005", "security", "medium", "An SBOM exists for the serving image",
       rationale="""Inference images bundle CUDA, NCCL, Python wheels and the engine; a CVE response needs to
       know what is inside.""",
       remediation="Generate an SBOM in the image build (syft, trivy) and set security.sbom: true.",
       path="security.sbom")
def sbom(ctx):
    if not s.security(ctx).sbom:
        return violated("no SBOM", warn=True)
    return passed("SBOM generated")


@check("SEC-006", "security", "high", "Prompt-injection defences are in place",
       rationale="""Models that read untrusted content (documents, web pages, tool output) can be instructed by it;
       with sensitive data or tools behind the model this is data exfiltration.""",
       remediation="""Add input/output filtering, tool-permission boundaries and tests for injection, and set
       security.prompt_injection_defense: true.""",
       path="security.prompt_injection_defense")
def prompt_injection(ctx):
    sec = s.security(ctx)
    if not sec.prompt_injection_defense:
        sensitive = sec.data_classification in SENSITIVE or bool(sec.pii)
        return violated("no prompt-injection defence" + (" with sensitive data" if sensitive else ""),
                        warn=not sensitive, data_classification=sec.data_classification)
    return passed("prompt-injection defence declared")


def _secret_paths(node: Any, path: str = "") -> list[str]:
    from forge.readiness.assess import looks_secret

    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            child = f"{path}.{k}" if path else str(k)
            if looks_secret(str(k), v):
                found.append(child)
            else:
                found.extend(_secret_paths(v, child))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found.extend(_secret_paths(v, f"{path}.{i}"))
    elif looks_secret("", node):
        found.append(path)
    return found


@check("SEC-007", "security", "critical", "No secrets in deploy.yaml",
       rationale="""deploy.yaml lives in git and in CI logs; a key in it is a leaked key.""",
       remediation="""Remove the value, rotate the secret, and reference it from a secret store (Kubernetes
       Secret, Vault) instead.""")
def no_secrets(ctx):
    paths = _secret_paths(ctx.loaded.raw)
    if paths:
        return violated(f"secret-looking value(s) at {', '.join(paths)} (values not shown)", paths[0], paths=paths)
    return passed("no secret-looking values")


@check("SEC-008", "security", "high", "Prompts with PII are not logged in clear",
       rationale="""Request logging of prompts/outputs copies PII into log pipelines with other retention and
       access rules than the service.""",
       remediation="Disable prompt logging (security.log_prompts: false) or redact PII before logging.",
       path="security.log_prompts")
def pii_logging(ctx):
    sec = s.security(ctx)
    if not sec.pii:
        return not_applicable("no PII declared")
    if sec.log_prompts is None:
        return violated("PII in prompts and prompt logging not declared", warn=True)
    if sec.log_prompts:
        return violated("prompts with PII are logged", pii=True, log_prompts=True)
    return passed("prompt logging off")


@check("SEC-009", "security", "medium", "Data classification is declared",
       rationale="""Every other security decision (threat model, logging, retention, network) depends on how
       sensitive the prompts are.""",
       remediation="Set security.data_classification (public, internal, confidential, restricted) and security.pii.",
       path="security.data_classification")
def classification(ctx):
    if s.security(ctx).data_classification is None:
        return violated("no data classification")
    return passed(f"data classified {s.security(ctx).data_classification}")


@check("SEC-010", "security", "medium", "Clients are rate limited",
       rationale="""One client's batch job can fill every KV cache and queue; per-client limits keep a noisy
       neighbour (or an abuser) from taking the service down for all.""",
       remediation="Set a per-client limit at the gateway (security.rate_limit_rps_per_client).",
       path="security.rate_limit_rps_per_client")
def rate_limit(ctx):
    if s.security(ctx).rate_limit_rps_per_client is None:
        return violated("no per-client rate limit", warn=True)
    return passed(f"{s.security(ctx).rate_limit_rps_per_client:g} req/s per client")
