"""Kubernetes manifests for a deploy.yaml: the reference deployment as objects a user applies with `kubectl apply -k`.

    files = render(Path("reference-stack/deploy.yaml"))    # {"rollout.yaml": "...", ...}, nothing written
    write(files, Path("reference-stack/k8s"))               # `forge stack k8s` does both

What comes from where (one source each, never restated by hand):
- deploy.yaml: model and engine args -> vLLM flags; replicas -> Rollout/HPA/PDB; gpus_per_replica -> `nvidia.com/gpu`
  (requests == limits); engine.args.shutdown_timeout + the preStop sleep -> terminationGracePeriodSeconds (must
  exceed their sum); SLO -> the AnalysisTemplate's success conditions; team/cost_center -> labels; capacity: spot ->
  spot tolerations and a preferred spot affinity (otherwise spot nodes are excluded).
- alerts/generate.py: the PrometheusRule's groups are Forge's generated rule groups for this deploy.yaml, the same
  rules `forge alerts build --deploy` writes (a test compares them with alerts/reference-stack-rules.yaml).
- the signal catalog: the HPA's Pods metrics and the prometheus-adapter rules name catalog signals
  (forge_requests_waiting, forge_kv_cache_usage_ratio) as the Forge exporter sidecar exposes them.

Tests (tests/test_k8s_manifests.py) validate core kinds with kubernetes-validate and the CRD kinds (Rollout,
AnalysisTemplate, ServiceMonitor, PrometheusRule) against the CRDs' own schemas vendored under k8s/schemas/.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from forge import __version__ as FORGE_VERSION
from forge.errors import InputError

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_DEPLOY = PACKAGE_DIR / "deploy.yaml"

# Images. Every tag is pinned (a test rejects `latest` and untagged images). The Forge and vLLM-CPU images are
# built from k8s/Dockerfile (README there); vLLM's GPU image is the project's own release image.
FORGE_IMAGE = f"ghcr.io/forge-inference/forge:{FORGE_VERSION}"
VLLM_GPU_IMAGE = "docker.io/vllm/vllm-openai:v{version}"
VLLM_CPU_IMAGE = "ghcr.io/forge-inference/vllm-cpu:{version}"
DCGM_EXPORTER_IMAGE = "nvcr.io/nvidia/k8s/dcgm-exporter:4.1.1-4.0.4-ubuntu22.04"

# Prometheus as prometheus-operator names it (the `prometheus-operated` governing Service) in the `monitoring`
# namespace; the canary analysis queries it. Override with `forge stack k8s --prometheus-url`.
DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"
MONITORING_NAMESPACE = "monitoring"
# Namespaces whose pods may call the engine carry this label (the gateway's, the clients').
CLIENT_NAMESPACE_LABEL = "forge.dev/llm-client"

ENGINE_PORT = 8000
EXPORTER_PORT = 9400          # the Forge exporter's port everywhere (`forge exporter run`)
DCGM_PORT = 9401              # dcgm-exporter's own default is 9400: moved, the Forge exporter has that one
DCGM_HOSTENGINE_PORT = 5555   # nv-hostengine on the node (GPU operator's nvidia-dcgm), read by the sidecar
UID = 1000                    # every container runs as this non-root user

# preStop: keep serving while the endpoint removal reaches kube-proxy and ingress controllers (a few seconds), then
# SIGTERM starts vLLM's --shutdown-timeout drain. The grace period must cover both, with margin.
PRESTOP_SLEEP_SECONDS = 5
GRACE_MARGIN_SECONDS = 5
# Spot reclaim notice per provider: AWS EC2 Spot two minutes ("Spot Instance interruption notices", EC2 User
# Guide); GCE 30 s ("Preemption process", Compute Engine docs); Azure at least 30 s (Scheduled Events, "Azure Spot
# Virtual Machines"). Without spot_drain.notice_source the shortest one applies.
SPOT_NOTICE_SECONDS = {"aws": 120, "gcp": 30, "azure": 30}

# Probes. Liveness only starts once the startup probe passed, so a slow weight load is never killed: the startup
# budget is 3x the measured start-up (reliability.startup_seconds), at least 5 minutes, or 30 minutes unmeasured.
PROBE_PERIOD_SECONDS = 10
STARTUP_BUDGET_FACTOR = 3
MIN_STARTUP_BUDGET_SECONDS = 300
UNMEASURED_STARTUP_BUDGET_SECONDS = 1800
HEALTH_PATH = "/health"

# Canary analysis (Argo Rollouts). A measurement every minute over the 5-minute recording rules; two failed
# measurements (failureLimit 1) abort the rollout, and the stable ReplicaSet, never scaled down during a canary,
# takes all traffic again. Defaults when deploy.yaml's rollout.analysis does not set them.
ANALYSIS_INTERVAL_SECONDS = 60
ANALYSIS_FAILURE_LIMIT = 1
DEFAULT_CANARY_STEPS = (10, 50)
CANARY_PAUSE = "10m"          # two 5-minute rate windows of canary traffic before the next step

# HPA targets per pod (averageValue). Requests waiting at all mean the running batch is full; KV usage is kept below
# the ForgeKVCacheNearFull threshold (alerts/generate.py) so scale-out starts before the alert.
HPA_QUEUE_TARGET = 2
HPA_KV_USAGE_MARGIN = 0.1
HPA_SCALE_DOWN_STABILIZATION_SECONDS = 600   # a replica costs minutes of weight loading: don't flap

# Resources. Sizing rules of thumb, not measurements: host memory holds a copy of the weights while loading plus
# runtime buffers; CPU feeds the tokenizer and the scheduler.
GPU_HOST_MEMORY_PER_GPU_GIB = 8
GPU_CPU_PER_GPU = 4
CPU_ENGINE_CPU = 2            # the reference machines' two cores (../shared/notes/vllm-cpu.md)
CPU_RUNTIME_MEMORY_GIB = 4    # torch + vLLM on the CPU backend, besides KV cache and weights
SHM_GIB = 2                   # /dev/shm for vLLM's shared-memory broadcast between processes (counts as memory)
SIDECAR_RESOURCES = {
    "forge-exporter": {"cpu": "250m", "memory": "256Mi"},
    "progress-watchdog": {"cpu": "100m", "memory": "128Mi"},
    "dcgm-exporter": {"cpu": "100m", "memory": "256Mi"},
    "verify-weights": {"cpu": "500m", "memory": "256Mi"},
}
WATCHDOG_POLL_SECONDS = 5

# Spot nodes as each provider labels (and GKE/AKS taint) them.
SPOT_NODE_LABELS = (
    ("cloud.google.com/gke-spot", "true"),
    ("eks.amazonaws.com/capacityType", "SPOT"),
    ("karpenter.sh/capacity-type", "spot"),
    ("kubernetes.azure.com/scalesetpriority", "spot"),
)
SPOT_TAINTS = (("cloud.google.com/gke-spot", "true"), ("kubernetes.azure.com/scalesetpriority", "spot"))

# The kustomize resources, in apply order (namespace first, CRD kinds after what they refer to).
RESOURCE_FILES = ("namespace.yaml", "serviceaccount.yaml", "configmap.yaml", "pvc.yaml", "services.yaml",
                  "analysistemplate.yaml", "rollout.yaml", "pdb.yaml", "hpa.yaml", "networkpolicy.yaml",
                  "servicemonitor.yaml", "prometheusrule.yaml")
ADAPTER_VALUES_FILE = "prometheus-adapter-values.yaml"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Options:
    namespace: str | None = None                  # default: the deployment's name
    prometheus_url: str = DEFAULT_PROMETHEUS_URL
    forge_image: str = FORGE_IMAGE
    source: str | None = None                     # the command in every file's header (default: from the path)


# ------------------------------------------------------------------------------------------------ helpers
class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Multi-line PromQL as literal blocks, as alerts/generate.py writes the same rules.
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _str_representer)
_Dumper.ignore_aliases = lambda self, data: True   # plain YAML a reader follows, no &anchors


def dump(*objects: dict) -> str:
    return "---\n".join(yaml.dump(o, Dumper=_Dumper, sort_keys=False, width=4096, allow_unicode=True)
                        for o in objects)


def _quantity_gib(gib: float) -> str:
    return f"{math.ceil(gib)}Gi"


def _decimal(value: float) -> str:
    """A Kubernetes quantity for a fraction, e.g. 0.8 -> "800m" (exact, no float noise)."""
    milli = round(value * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _flag_args(args: dict[str, Any]) -> list[str]:
    """deploy.yaml's engine.args (vLLM's flag names in snake_case) as vLLM command-line flags."""
    out: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (dict, list)):
            out += [flag, json.dumps(value, separators=(",", ":"), sort_keys=True)]
        else:
            out += [flag, str(_number(value)) if isinstance(value, float) else str(value)]
    return out


# ------------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class Plan:
    """Everything the manifests derive from deploy.yaml, checked once."""

    name: str
    namespace: str
    model: str
    engine_version: str
    engine_flags: list[str]
    gpus: int                     # nvidia.com/gpu per pod; 0 on the CPU backend
    cpu: str
    memory: str
    weights_gib: float
    replicas_min: int
    replicas_max: int
    shutdown_seconds: float
    grace_seconds: int
    startup_budget_seconds: int
    readiness_period_seconds: int
    watchdog_stall_seconds: float
    spot: bool
    slo: Any
    canary_steps: tuple[int, ...]
    analysis_interval_seconds: int
    analysis_failure_limit: int
    pdb: dict[str, Any]
    labels: dict[str, str]
    selector: dict[str, str]


def plan(deployment: Any, options: Options) -> Plan:
    from forge.hardware import get as get_gpu
    from forge.models import geometry
    from forge.readiness.capacity import weight_bytes_total, weights_dtype

    d = deployment
    problems: list[str] = []
    name = d.metadata.name
    if not _DNS_LABEL.match(name) or len(name) > 50:
        problems.append(f"metadata.name: {name!r} is not a DNS-1123 label of at most 50 characters (Kubernetes "
                        "object and Service names) — use lowercase letters, digits and '-', e.g. chat-70b")
    namespace = options.namespace or name
    if not _DNS_LABEL.match(namespace) or len(namespace) > 63:
        problems.append(f"--namespace {namespace!r}: not a DNS-1123 label — use lowercase letters, digits and '-'")
    if d.engine.name != "vllm":
        problems.append(f"engine.name: {d.engine.name!r} — the manifests run vLLM only; other engines need their "
                        "own serving container")
    if not d.engine.version:
        problems.append("engine.version: not set — pin the engine version, e.g. \"0.32.0\" (the image tag; never "
                        "`latest`)")
    args = d.engine.args
    shutdown = args.shutdown_timeout
    if shutdown is None:
        problems.append("engine.args.shutdown_timeout: not set — give vLLM seconds to drain in-flight requests "
                        "on SIGTERM, e.g. 60 (the default 0 drops every stream at each scale-in)")
        shutdown = 0.0
    replicas = d.hardware.replicas
    replicas_min, replicas_max = (replicas.min, replicas.max) if replicas else (1, 1)
    if replicas_min < 1:
        problems.append(f"hardware.replicas.min: {replicas_min} — serve with at least one replica")
    gpu = get_gpu(d.hardware.gpu)
    per_pod_ranks = args.tensor_parallel_size * args.pipeline_parallel_size
    on_cpu = gpu.vendor == "generic"
    if not on_cpu and gpu.vendor != "NVIDIA":
        problems.append(f"hardware.gpu: {d.hardware.gpu} ({gpu.vendor}) — the manifests request nvidia.com/gpu; "
                        "other vendors' device plugins are not generated")
    if not on_cpu and d.hardware.gpus_per_replica != per_pod_ranks:
        problems.append(f"hardware.gpus_per_replica: {d.hardware.gpus_per_replica} but tensor_parallel_size x "
                        f"pipeline_parallel_size is {per_pod_ranks} — request exactly the GPUs vLLM uses")

    # Grace period: deploy.yaml's own, or the drain plus the preStop sleep plus margin.
    needed = shutdown + PRESTOP_SLEEP_SECONDS
    declared = d.reliability.termination_grace_period_seconds if d.reliability else None
    grace = int(math.ceil(declared)) if declared is not None else int(math.ceil(needed + GRACE_MARGIN_SECONDS))
    if grace <= needed:
        problems.append(f"reliability.termination_grace_period_seconds: {_number(declared)} s does not exceed "
                        f"shutdown_timeout {_number(shutdown)} s + preStop {PRESTOP_SLEEP_SECONDS} s — raise it to "
                        f"at least {int(needed) + GRACE_MARGIN_SECONDS} or every scale-in SIGKILLs streams")
    spot = d.hardware.capacity == "spot"
    if spot:
        drain = d.reliability.spot_drain if d.reliability else None
        source = drain.notice_source if drain is not None and not isinstance(drain, bool) else None
        notice = SPOT_NOTICE_SECONDS.get(source or "", min(SPOT_NOTICE_SECONDS.values()))
        if grace > notice:
            problems.append(f"reliability.termination_grace_period_seconds: {grace} s is longer than the spot "
                            f"notice ({notice} s{', ' + source if source else ', the shortest provider'}) — a "
                            "reclaim kills the pod before the drain ends; shorten shutdown_timeout")

    # Model size: the capacity model's weight bytes (the same numbers `forge capacity plan` uses).
    weights_gib = 1.0
    try:
        geo = geometry(d)
        weights_gib = weight_bytes_total(geo, weights_dtype(d, geo)) / 2**30
    except InputError as exc:
        problems += exc.messages
    if on_cpu:
        kv_gib = (args.kv_cache_memory_bytes or 4 * 2**30) / 2**30   # vLLM CPU's default KV space is 4 GiB
        cpu = str(CPU_ENGINE_CPU * per_pod_ranks)
        memory = _quantity_gib(weights_gib + kv_gib + CPU_RUNTIME_MEMORY_GIB + SHM_GIB)
        gpus = 0
    else:
        gpus = d.hardware.gpus_per_replica
        cpu = str(GPU_CPU_PER_GPU * gpus)
        memory = _quantity_gib(weights_gib * 1.25 + GPU_HOST_MEMORY_PER_GPU_GIB * gpus + SHM_GIB)

    startup = d.reliability.startup_seconds if d.reliability else None
    budget = (max(STARTUP_BUDGET_FACTOR * startup, MIN_STARTUP_BUDGET_SECONDS) if startup
              else UNMEASURED_STARTUP_BUDGET_SECONDS)
    readiness_probe = d.reliability.readiness_probe if d.reliability else None
    readiness_period = int(math.ceil(readiness_probe.period_seconds)) if readiness_probe else PROBE_PERIOD_SECONDS
    liveness = d.reliability.liveness if d.reliability else None
    watchdog = liveness.progress_watchdog if liveness else None
    stall = watchdog.stall_seconds if watchdog is not None and not isinstance(watchdog, bool) else 30.0

    rollout = d.rollout
    steps = tuple(rollout.canary_steps) if rollout and rollout.canary_steps else DEFAULT_CANARY_STEPS
    if any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
        problems.append(f"rollout.canary_steps: {list(steps)} — give rising percentages between 1 and 100")
    steps = tuple(s for s in steps if s < 100)   # the end of the steps is full promotion anyway
    analysis = rollout.analysis if rollout else None
    interval = int(math.ceil(analysis.interval_seconds)) if analysis else ANALYSIS_INTERVAL_SECONDS
    failure_limit = analysis.failure_limit if analysis else ANALYSIS_FAILURE_LIMIT

    pdb_declared = d.reliability.pod_disruption_budget if d.reliability else None
    if pdb_declared is not None:
        pdb = {"minAvailable": pdb_declared.min_available}
    elif replicas_min >= 2:
        pdb = {"minAvailable": replicas_min - 1}
    else:
        pdb = {"maxUnavailable": 1}

    selector = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "inference"}
    labels = {**selector, "app.kubernetes.io/part-of": "forge", "app.kubernetes.io/managed-by": "forge"}
    meta = d.metadata
    for key, value in (("team", meta.team), ("cost_center", meta.cost_center), ("environment", meta.environment)):
        if value:
            labels[key] = value
    for key, value in meta.labels.items():
        labels.setdefault(key, value)
    for key, value in labels.items():
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            problems.append(f"metadata: label {key}={value!r} is not a valid Kubernetes label value — at most 63 "
                            "letters, digits, '-', '_' or '.', starting and ending with a letter or digit")
    if problems:
        raise InputError(problems)

    engine_args = args.model_dump(exclude_unset=True, exclude_none=True)
    engine_args.update({k: v for k, v in (args.model_extra or {}).items() if v is not None})
    if "speculative_config" in engine_args:
        # Forge's own expectation (what the acceptance alert compares with), not a vLLM setting.
        engine_args["speculative_config"].pop("expected_acceptance_rate", None)
    flags = ["--model", f"/models/{d.model.name}", "--served-model-name", d.model.name,
             "--host", "0.0.0.0", "--port", str(ENGINE_PORT)]
    if d.model.max_model_len:
        flags += ["--max-model-len", str(d.model.max_model_len)]
    flags += _flag_args(engine_args)
    return Plan(name=name, namespace=namespace, model=d.model.name, engine_version=d.engine.version,
                engine_flags=flags, gpus=gpus, cpu=cpu, memory=memory, weights_gib=weights_gib,
                replicas_min=replicas_min, replicas_max=max(replicas_max, replicas_min), shutdown_seconds=shutdown,
                grace_seconds=grace, startup_budget_seconds=int(budget), readiness_period_seconds=readiness_period,
                watchdog_stall_seconds=stall, spot=spot, slo=d.slo, canary_steps=steps,
                analysis_interval_seconds=interval, analysis_failure_limit=failure_limit, pdb=pdb, labels=labels,
                selector=selector)


# ------------------------------------------------------------------------------------------------ objects
def _meta(p: Plan, name: str, component: str | None = None, **extra: Any) -> dict:
    labels = dict(p.labels)
    if component:
        labels["app.kubernetes.io/component"] = component
    return {"name": name, "namespace": p.namespace, "labels": labels, **extra}


def _container_security() -> dict:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}}


def _resources(values: dict[str, Any]) -> dict:
    # requests == limits: Guaranteed QoS, and for nvidia.com/gpu Kubernetes requires it anyway.
    return {"requests": dict(values), "limits": dict(values)}


def _http_probe(path: str, port: str, period: int, failures: int, timeout: int = 5) -> dict:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "timeoutSeconds": timeout,
            "failureThreshold": failures}


def _engine_container(p: Plan) -> dict:
    image = (VLLM_GPU_IMAGE if p.gpus else VLLM_CPU_IMAGE).format(version=p.engine_version)
    resources: dict[str, Any] = {"cpu": p.cpu, "memory": p.memory}
    if p.gpus:
        resources["nvidia.com/gpu"] = p.gpus
    env = [
        {"name": "HF_HUB_OFFLINE", "value": "1"},          # weights come from the volume, never from a hub
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
        {"name": "HOME", "value": "/cache"},               # read-only root fs: every cache goes to emptyDirs
        {"name": "XDG_CACHE_HOME", "value": "/cache"},
        {"name": "VLLM_CACHE_ROOT", "value": "/cache/vllm"},
    ]
    return {
        "name": "vllm",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": p.engine_flags,
        "env": env,
        "ports": [{"name": "http", "containerPort": ENGINE_PORT, "protocol": "TCP"}],
        "startupProbe": _http_probe(HEALTH_PATH, "http", PROBE_PERIOD_SECONDS,
                                    math.ceil(p.startup_budget_seconds / PROBE_PERIOD_SECONDS)),
        "readinessProbe": _http_probe(HEALTH_PATH, "http", p.readiness_period_seconds, 3),
        "livenessProbe": _http_probe(HEALTH_PATH, "http", PROBE_PERIOD_SECONDS, 6),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "resources": _resources(resources),
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "weights", "mountPath": f"/models/{p.model}", "readOnly": True},
            {"name": "cache", "mountPath": "/cache"},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }


def _sidecar(name: str, image: str, command: list[str], args: list[str], **extra: Any) -> dict:
    # Native sidecars (init containers that keep running, Kubernetes 1.29+): started before vLLM, stopped after it,
    # so the exporter keeps reporting while the engine drains.
    return {"name": name, "image": image, "imagePullPolicy": "IfNotPresent", "restartPolicy": "Always",
            "command": command, "args": args, **extra,
            "resources": _resources(SIDECAR_RESOURCES[name]), "securityContext": _container_security()}


def _init_containers(p: Plan, options: Options) -> list[dict]:
    local_engine = f"http://127.0.0.1:{ENGINE_PORT}"
    verify = {
        "name": "verify-weights", "image": options.forge_image, "imagePullPolicy": "IfNotPresent",
        "command": ["forge"], "args": ["stack", "model", "verify", "--dir", f"/models/{p.model}"],
        "resources": _resources(SIDECAR_RESOURCES["verify-weights"]), "securityContext": _container_security(),
        "volumeMounts": [{"name": "weights", "mountPath": f"/models/{p.model}", "readOnly": True}],
    }
    exporter_args = ["exporter", "run", "--deploy", "/etc/forge/deploy.yaml", "--target", f"{local_engine}/metrics",
                     "--listen", f"0.0.0.0:{EXPORTER_PORT}", "--interval", "15"]
    if p.gpus:
        exporter_args += ["--gpu", "dcgm-exporter", "--dcgm-url", f"http://127.0.0.1:{DCGM_PORT}/metrics"]
    else:
        exporter_args += ["--gpu", "off"]
    exporter = _sidecar(
        "forge-exporter", options.forge_image, ["forge"], exporter_args,
        ports=[{"name": "metrics", "containerPort": EXPORTER_PORT, "protocol": "TCP"}],
        startupProbe=_http_probe("/", "metrics", 5, 12),
        readinessProbe=_http_probe("/", "metrics", PROBE_PERIOD_SECONDS, 3),
        livenessProbe=_http_probe("/", "metrics", PROBE_PERIOD_SECONDS, 6),
        volumeMounts=[{"name": "forge-config", "mountPath": "/etc/forge", "readOnly": True},
                      {"name": "tmp", "mountPath": "/tmp"}],
    )
    # Detects the hang /health misses (requests running, token counters frozen) and logs it; no port, no probe:
    # the process is the check, and a crash restarts it.
    watchdog = _sidecar(
        "progress-watchdog", options.forge_image, ["forge"],
        ["chaos", "watchdog", "--target", local_engine, "--stall-seconds", str(_number(p.watchdog_stall_seconds)),
         "--poll-interval", str(WATCHDOG_POLL_SECONDS)],
        volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}],
    )
    containers = [verify, exporter, watchdog]
    if p.gpus:
        # GPU health from the node's nv-hostengine (remote mode): the sidecar needs no GPU of its own (the device
        # plugin gives the pod's GPUs to the vLLM container only) and no privileges.
        containers.append(_sidecar(
            "dcgm-exporter", DCGM_EXPORTER_IMAGE, ["dcgm-exporter"],
            ["--remote-hostengine-info", f"$(NODE_IP):{DCGM_HOSTENGINE_PORT}", "--address", f":{DCGM_PORT}"],
            env=[{"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}],
            ports=[{"name": "dcgm", "containerPort": DCGM_PORT, "protocol": "TCP"}],
            startupProbe=_http_probe("/health", "dcgm", 5, 24),
            readinessProbe=_http_probe("/health", "dcgm", PROBE_PERIOD_SECONDS, 3),
            livenessProbe=_http_probe("/health", "dcgm", PROBE_PERIOD_SECONDS, 6),
        ))
    return containers


def _scheduling(p: Plan) -> dict:
    spec: dict[str, Any] = {}
    if p.spot:
        spec["tolerations"] = [{"key": k, "operator": "Equal", "value": v, "effect": "NoSchedule"}
                               for k, v in SPOT_TAINTS]
        # Preferred, not required: when spot capacity runs dry the pods still land on on-demand nodes.
        spec["affinity"] = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "preference": {"matchExpressions": [{"key": k, "operator": "In", "values": [v]}]}}
            for k, v in SPOT_NODE_LABELS]}}
    else:
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": k, "operator": "NotIn", "values": [v]} for k, v in SPOT_NODE_LABELS]}]}}}
    if p.gpus:
        spec.setdefault("tolerations", []).append(
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    # Spread over zones and nodes: one reclaim or node drain takes as few replicas as possible.
    spec["topologySpreadConstraints"] = [
        {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": {"matchLabels": p.selector}}
        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")]
    return spec


def pod_template(p: Plan, options: Options) -> dict:
    volumes = [
        {"name": "weights", "persistentVolumeClaim": {"claimName": f"{p.name}-weights", "readOnly": True}},
        {"name": "forge-config", "configMap": {"name": f"{p.name}-forge"}},
        {"name": "cache", "emptyDir": {"sizeLimit": "10Gi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{SHM_GIB}Gi"}},
    ]
    spec = {
        "serviceAccountName": p.name,
        "automountServiceAccountToken": False,   # nothing in the pod talks to the API server
        "terminationGracePeriodSeconds": p.grace_seconds,
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": _init_containers(p, options),
        "containers": [_engine_container(p)],
        "volumes": volumes,
        **_scheduling(p),
    }
    return {"metadata": {"labels": dict(p.labels)}, "spec": spec}


def _analysis_template(p: Plan, options: Options) -> dict:
    """The Forge SLO queries as canary gates, reading the PrometheusRule's recording rules."""
    metrics = []
    common = {"interval": f"{p.analysis_interval_seconds}s", "failureLimit": p.analysis_failure_limit}
    prometheus = {"address": options.prometheus_url}
    slo = p.slo
    if slo is not None and slo.availability is not None:
        budget = _number(round(1 - slo.availability, 10))
        # The canary's own pods: Rollout pods are named <rollout>-<pod-template-hash>-<suffix>, and the
        # ServiceMonitor writes the pod name into `replica`.
        metrics.append({"name": "canary-error-ratio", **common,
                        # NaN: no request reached the canary in the window, so none failed.
                        "successCondition": f"isNaN(result[0]) || result[0] <= {budget}",
                        "provider": {"prometheus": {**prometheus, "query": (
                            f'max(replica:forge_error_ratio:ratio_rate5m{{model="{p.model}", '
                            f'replica=~"{p.name}-{{{{args.canary-hash}}}}-.*"}}) or vector(0)')}}})
    for key, signal in (("ttft_p95_seconds", "forge_ttft_seconds"), ("itl_p95_seconds", "forge_itl_seconds")):
        threshold = getattr(slo, key, None) if slo is not None else None
        if threshold is None:
            continue
        # The service as a whole stays inside its latency SLO while the canary takes traffic.
        metrics.append({"name": signal.removeprefix("forge_").removesuffix("_seconds") + "-p95", **common,
                        "successCondition": f"result[0] <= {_number(threshold)}",
                        "provider": {"prometheus": {**prometheus,
                                                    "query": f'max(model:{signal}:p95_5m{{model="{p.model}"}})'}}})
    if not metrics:
        raise InputError("slo: no availability, ttft_p95_seconds or itl_p95_seconds — the canary analysis needs "
                         "at least one SLO to gate on")
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": _meta(p, f"{p.name}-slo", "rollout-analysis"),
            "spec": {"args": [{"name": "canary-hash"}], "metrics": metrics}}


def _rollout(p: Plan, options: Options) -> dict:
    steps: list[dict] = []
    for weight in p.canary_steps:
        steps += [{"setWeight": weight}, {"pause": {"duration": CANARY_PAUSE}}]
    return {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": _meta(p, p.name),
        "spec": {
            "replicas": p.replicas_min,       # the HPA owns the count from here on
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": dict(p.selector)},
            "template": pod_template(p, options),
            "strategy": {"canary": {
                # One extra pod at a time and none taken away: GPUs are scarce, capacity must not dip.
                "maxSurge": 1, "maxUnavailable": 0,
                "analysis": {"templates": [{"templateName": f"{p.name}-slo"}], "startingStep": 1,
                             "args": [{"name": "canary-hash",
                                       "valueFrom": {"podTemplateHashValue": "Latest"}}]},
                "steps": steps,
            }},
        },
    }


def _services(p: Plan) -> list[dict]:
    engine = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(p, p.name),
              "spec": {"type": "ClusterIP", "selector": dict(p.selector),
                       "ports": [{"name": "http", "port": ENGINE_PORT, "targetPort": "http", "protocol": "TCP"}]}}
    metrics = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(p, f"{p.name}-metrics", "metrics"),
               "spec": {"type": "ClusterIP", "clusterIP": "None", "selector": dict(p.selector),
                        "ports": [{"name": "metrics", "port": EXPORTER_PORT, "targetPort": "metrics",
                                   "protocol": "TCP"}]}}
    return [engine, metrics]


def _service_monitor(p: Plan) -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": _meta(p, p.name, "metrics"),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": p.name, "app.kubernetes.io/component": "metrics"}},
            "namespaceSelector": {"matchNames": [p.namespace]},
            "endpoints": [{
                "port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s",
                # Every pod's exporter names its one engine `<deployment>-0`; the pod name is the replica here.
                "metricRelabelings": [{"sourceLabels": ["replica", "pod"], "regex": ".+;(.+)",
                                       "targetLabel": "replica", "replacement": "$1", "action": "replace"}],
            }],
        },
    }


def prometheus_rule_groups(deployment: Any) -> list[dict]:
    """Forge's generated rule groups for this deploy.yaml (what `forge alerts build --deploy` writes)."""
    from forge.alerts.generate import build_rules, render, settings_from_deployment

    text = render(build_rules(settings_from_deployment(deployment)), "forge stack k8s")
    return yaml.safe_load(text)["groups"]


def _prometheus_rule(p: Plan, deployment: Any) -> dict:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": _meta(p, p.name, "alerts"), "spec": {"groups": prometheus_rule_groups(deployment)}}


def _hpa(p: Plan) -> dict:
    from forge.alerts.generate import KV_NEAR_FULL_RATIO

    def pods_metric(name: str, average: str) -> dict:
        return {"type": "Pods", "pods": {"metric": {"name": name},
                                         "target": {"type": "AverageValue", "averageValue": average}}}

    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(p, p.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": p.name},
            "minReplicas": p.replicas_min, "maxReplicas": p.replicas_max,
            # Catalog signals, served per pod by prometheus-adapter (prometheus-adapter-values.yaml).
            "metrics": [pods_metric("forge_requests_waiting", str(HPA_QUEUE_TARGET)),
                        pods_metric("forge_kv_cache_usage_ratio",
                                    _decimal(KV_NEAR_FULL_RATIO - HPA_KV_USAGE_MARGIN))],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 60,
                            "policies": [{"type": "Pods", "value": 2, "periodSeconds": 120}]},
                "scaleDown": {"stabilizationWindowSeconds": HPA_SCALE_DOWN_STABILIZATION_SECONDS,
                              "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]},
            },
        },
    }


HPA_METRICS = ("forge_requests_waiting", "forge_kv_cache_usage_ratio")


def _adapter_values(p: Plan) -> dict:
    """prometheus-adapter Helm values (`rules.custom`): each HPA metric per pod, under its catalog name."""
    return {"rules": {"default": False, "custom": [
        {"seriesQuery": f'{name}{{namespace!="",pod!=""}}',
         "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
         "name": {"matches": f"^{name}$", "as": name},
         "metricsQuery": "max by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})"}
        for name in HPA_METRICS]}}


def _pdb(p: Plan) -> dict:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(p, p.name),
            "spec": {**p.pdb, "selector": {"matchLabels": dict(p.selector)},
                     # A pod stuck unready (bad node, failed load) must not block a node drain.
                     "unhealthyPodEvictionPolicy": "AlwaysAllow"}}


def _network_policy(p: Plan) -> dict:
    egress: list[dict] = [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                                   "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                           "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]
    if p.gpus:
        # dcgm-exporter reads the node's nv-hostengine; node IPs are not known here, the port is.
        egress.append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                       "ports": [{"protocol": "TCP", "port": DCGM_HOSTENGINE_PORT}]})
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(p, p.name),
        "spec": {
            "podSelector": {"matchLabels": dict(p.selector)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {CLIENT_NAMESPACE_LABEL: "true"}}},
                          {"podSelector": {}}],
                 "ports": [{"protocol": "TCP", "port": ENGINE_PORT}]},
                {"from": [{"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": MONITORING_NAMESPACE}}}],
                 "ports": [{"protocol": "TCP", "port": EXPORTER_PORT}]},
            ],
            "egress": egress,
        },
    }


def _namespace(p: Plan) -> dict:
    labels = {k: v for k, v in p.labels.items() if not k.startswith("app.kubernetes.io/component")}
    # Pod Security Admission "restricted": the pod above is written to pass it.
    labels.update({"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"})
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": p.namespace, "labels": labels}}


def _config_map(p: Plan, deploy_text: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(p, f"{p.name}-forge", "config"),
            "data": {"deploy.yaml": deploy_text}}


def _pvc(p: Plan) -> dict:
    # The weights live on a volume, not in the image; every replica mounts them read-only.
    size = _quantity_gib(max(p.weights_gib * 1.1, 1))
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(p, f"{p.name}-weights", "weights"),
            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": size}}}}


def _service_account(p: Plan) -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(p, p.name),
            "automountServiceAccountToken": False}


def _kustomization(p: Plan) -> dict:
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": list(RESOURCE_FILES)}


# ------------------------------------------------------------------------------------------------ render / write
def _shown_path(path: Path) -> str:
    """Relative to the working directory where possible: no machine's home directory in a committed header."""
    try:
        return Path(path).resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return Path(path).name


def _located(loaded: Any, deploy: Path, message: str) -> str:
    """`file:line:col: key: problem` for a message that starts with a deploy.yaml key, as Forge reports input."""
    key = re.match(r"^([a-z_]+(?:\.[a-z_]+)*):", message)
    if key is None:
        return message
    line, column = loaded.lines.locate(key.group(1))
    return f"{_shown_path(deploy)}:{line}:{column}: {message}"


def render(deploy: Path = DEFAULT_DEPLOY, options: Options | None = None) -> dict[str, str]:
    """File name -> text for every manifest of `deploy` (nothing written). InputError on bad input."""
    from forge.loader import load, read_text

    options = options or Options()
    loaded = load(deploy)
    deployment = loaded.deployment
    try:
        p = plan(deployment, options)
    except InputError as exc:
        raise InputError([_located(loaded, deploy, m) for m in exc.messages]) from None
    source = options.source or f"forge stack k8s --deploy {_shown_path(deploy)}"
    header = f"# Generated by `{source}` — do not edit; a test compares this file with a fresh generation.\n"
    objects: dict[str, list[dict]] = {
        "namespace.yaml": [_namespace(p)],
        "serviceaccount.yaml": [_service_account(p)],
        "configmap.yaml": [_config_map(p, read_text(deploy))],
        "pvc.yaml": [_pvc(p)],
        "services.yaml": _services(p),
        "analysistemplate.yaml": [_analysis_template(p, options)],
        "rollout.yaml": [_rollout(p, options)],
        "pdb.yaml": [_pdb(p)],
        "hpa.yaml": [_hpa(p)],
        "networkpolicy.yaml": [_network_policy(p)],
        "servicemonitor.yaml": [_service_monitor(p)],
        "prometheusrule.yaml": [_prometheus_rule(p, deployment)],
    }
    assert tuple(objects) == RESOURCE_FILES
    files = {name: header + dump(*objs) for name, objs in objects.items()}
    files["kustomization.yaml"] = header + dump(_kustomization(p))
    files[ADAPTER_VALUES_FILE] = (header + "# Helm values for prometheus-community/prometheus-adapter: the HPA's Pods "
                                  "metrics (not a kustomize resource).\n" + dump(_adapter_values(p)))
    return files


def write(files: dict[str, str], out: Path) -> list[Path]:
    """Write every file under `out` (created if missing); returns the paths. InputError when it can't."""
    from forge.console import write_atomic

    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            write_atomic(out / name, text)
            written.append(out / name)
    except OSError as exc:
        raise InputError(f"--out {out}: {exc.strerror or exc} — choose a writable directory") from None
    return written


def load_documents(directory: Path) -> list[dict]:
    """Every object of the kustomize resources under `directory`, in kustomization order."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    docs: list[dict] = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((directory / name).read_text(encoding="utf-8")) if d]
    return docs


# ------------------------------------------------------------------------------------------------ CRD schemas
def vendor_crd_schema(crd_text: str, source: str, drop: tuple[str, ...] = ()) -> str:
    """The openAPIV3Schema of a CRD's storage version, without descriptions and without the subtrees in `drop`
    (dotted property paths from the object root, `[]` for list items, e.g. `spec.metrics[].provider.job`), as YAML
    with a header naming its source (repository, path, version)."""
    crd = yaml.safe_load(crd_text)
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "description"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    schema = strip(version["schema"]["openAPIV3Schema"])
    for path in drop:
        node = schema
        *parents, leaf = path.split(".")
        for part in parents:
            node = node["properties"][part.removesuffix("[]")]
            if part.endswith("[]"):
                node = node["items"]
        del node["properties"][leaf]
    body = {"group": crd["spec"]["group"], "kind": crd["spec"]["names"]["kind"], "version": version["name"],
            "openAPIV3Schema": schema}
    dropped = f"; dropped (unused here): {', '.join(drop)}" if drop else ""
    return (f"# Vendored from {source}: spec.versions[{version['name']}].schema.openAPIV3Schema, descriptions "
            f"removed{dropped}.\n# Regenerate: git show <tag>:<path> | python -m forge.reference_stack.k8s "
            "vendor-schema '<source>' [PATH-TO-DROP ...] > <this file>\n"
            + yaml.safe_dump(body, sort_keys=False, width=4096))


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "vendor-schema":
        sys.stdout.write(vendor_crd_schema(sys.stdin.read(), argv[1], tuple(argv[2:])))
        return 0
    sys.stderr.write("usage: python -m forge.reference_stack.k8s vendor-schema 'REPO PATH@VERSION' [DROP ...] "
                     "< crd.yaml\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
