"""vLLM 0.32's /metrics families, one prometheus_client registry per simulated engine.

Names, types, HELP texts, label names and histogram buckets are those of a real vLLM 0.32 page
(../shared/reference/vllm-0.32-cpu-metrics.txt; vLLM's vllm/v1/metrics/loggers.py and, for the `http_*`
families, prometheus-fastapi-instrumentator as vLLM configures it). `spec_decode_*` families (from vLLM's
vllm/v1/spec_decode/metrics.py) appear only when speculative decoding is on, as on a real page.
prometheus_client renders `_created` series as separate gauges with their own HELP/TYPE, exactly like the
reference page, because vLLM uses the same library.
"""

from __future__ import annotations

import time

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter, \
    Gauge, Histogram, Summary, generate_latest

# Buckets as on the reference page.
TOKEN_COUNT_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]  # vLLM: build_1_2_5_buckets(max_model_len)
ITERATION_TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
PARAMS_N_BUCKETS = [1, 2, 5, 10, 20]
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0]
REQUEST_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                           240.0, 480.0, 960.0, 1920.0, 7680.0]
PREEMPTION_BUCKETS = [1, 2, 3, 4, 5, 10, 20]
HTTP_HIGHR_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 7.5, 10,
                      30, 60]
HTTP_BUCKETS = [0.1, 0.5, 1]

FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")
PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
CACHED_SOURCES = ("device", "host", "p2p", "disk", "external_unspecified")
SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")
ADMISSION_REASONS = ("max_num_queued_reqs", "max_num_queued_tokens")
# prometheus-fastapi-instrumentator as vLLM sets it up: these handlers are not instrumented.
HTTP_EXCLUDED_HANDLERS = ("/metrics", "/health", "/load", "/ping", "/version", "/server_info")

_INSTRUMENTATOR_SIZE_HELP = "by handler. Only value of header is respected. Otherwise ignored. No percentile calculated. "


_PROCESS_REGISTRY = CollectorRegistry(auto_describe=False)
for _collector in (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR):
    _PROCESS_REGISTRY.register(_collector)
PROCESS_PAGE_MAX_AGE_S = 1.0  # process CPU/RSS/fds: fresh enough for any scrape interval
_process_page: tuple[float, bytes] = (float("-inf"), b"")


def _process_families() -> bytes:
    global _process_page
    now = time.monotonic()
    if now - _process_page[0] > PROCESS_PAGE_MAX_AGE_S:
        _process_page = (now, generate_latest(_PROCESS_REGISTRY))
    return _process_page[1]


class EngineMetrics:
    """Every family of one engine's page, with children pre-bound to its labels (engine, model_name)."""

    def __init__(self, engine_index: int, model_name: str, cache_info: dict[str, str], spec_tokens: int) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=False)
        # Rendering a page costs ~10 ms of CPU (prometheus_client, 2-core machine), too much for 1,000 engines
        # scraped every few seconds; the engine bumps `version` whenever a value may have changed, and an
        # unchanged engine's page is served from cache (see render()).
        self.version = 0
        self._rendered: tuple[int, bytes] | None = None
        labels = {"engine": str(engine_index), "model_name": model_name}
        names = list(labels)

        def counter(name: str, help_text: str) -> Counter:
            return Counter(name, help_text, names, registry=registry).labels(**labels)

        def histogram(name: str, help_text: str, buckets: list[float]):
            return Histogram(name, help_text, names, buckets=buckets, registry=registry).labels(**labels)

        gpu_help = "(for Model Flops Utilization calculations)."
        # Never incremented: vLLM only fills these with MFU accounting on, which the reference page has off.
        self.estimated_flops = counter("vllm:estimated_flops_per_gpu",
                                       f"Estimated number of floating point operations per GPU {gpu_help}")
        self.estimated_read_bytes = counter("vllm:estimated_read_bytes_per_gpu",
                                            f"Estimated number of bytes read from memory per GPU {gpu_help}")
        self.estimated_write_bytes = counter("vllm:estimated_write_bytes_per_gpu",
                                             f"Estimated number of bytes written to memory per GPU {gpu_help}")
        self.num_requests_running = Gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                                          names, registry=registry).labels(**labels)
        self.num_requests_waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                                          names, registry=registry).labels(**labels)
        waiting_by_reason = Gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; "
            "'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). Sum of all "
            "reasons equals vllm:num_requests_waiting.", names + ["reason"], registry=registry)
        self.num_requests_waiting_capacity = waiting_by_reason.labels(**labels, reason="capacity")
        waiting_by_reason.labels(**labels, reason="deferred")  # the simulator never defers: stays 0
        sleep_state = Gauge(
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
            "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
            names + ["sleep_state"], registry=registry)
        for state in SLEEP_STATES:
            sleep_state.labels(**labels, sleep_state=state).set(1 if state == "awake" else 0)
        self.kv_cache_usage_perc = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                                         names, registry=registry).labels(**labels)
        self.prefix_cache_queries = counter("vllm:prefix_cache_queries",
                                            "Prefix cache queries, in terms of number of queried tokens.")
        self.prefix_cache_hits = counter("vllm:prefix_cache_hits",
                                         "Prefix cache hits, in terms of number of cached tokens.")
        counter("vllm:external_prefix_cache_queries", "External prefix cache queries from KV connector cross-instance "
                "cache sharing, in terms of number of queried tokens.")
        counter("vllm:external_prefix_cache_hits", "External prefix cache hits from KV connector cross-instance cache "
                "sharing, in terms of number of cached tokens.")
        counter("vllm:mm_cache_queries", "Multi-modal cache queries, in terms of number of queried items.")
        counter("vllm:mm_cache_hits", "Multi-modal cache hits, in terms of number of cached items.")
        self.num_preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        by_source = Counter("vllm:prompt_tokens_by_source", "Number of prompt tokens by source.",
                            names + ["source"], registry=registry)
        self.prompt_tokens_by_source = {source: by_source.labels(**labels, source=source) for source in PROMPT_SOURCES}
        self.prompt_tokens_cached = counter("vllm:prompt_tokens_cached",
                                            "Number of cached prompt tokens (local + external).")
        cached_by_source = Counter(
            "vllm:prompt_tokens_cached_by_source",
            "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host (offloaded to "
            "DRAM), disk, p2p (transferred from another vLLM instance) or external_unspecified. Counted at admission; "
            "sums to vllm:prefix_cache_hits + vllm:external_prefix_cache_hits.", names + ["source"], registry=registry)
        self.prompt_tokens_cached_device = None
        for source in CACHED_SOURCES:
            child = cached_by_source.labels(**labels, source=source)
            if source == "device":
                self.prompt_tokens_cached_device = child
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          ["engine", "finished_reason", "model_name"], registry=registry)
        self.request_success = {reason: success.labels(engine=labels["engine"], finished_reason=reason,
                                                       model_name=model_name) for reason in FINISHED_REASONS}
        rejections = Counter("vllm:admission_rejections",
                             "Number of admission attempts rejected by a queue limit, by reason.",
                             ["model_name", "reason"], registry=registry)
        for reason in ADMISSION_REASONS:  # no queue limit in the simulator: stays 0
            rejections.labels(model_name=model_name, reason=reason)

        self.request_prompt_tokens = histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                                               TOKEN_COUNT_BUCKETS)
        self.request_generation_tokens = histogram("vllm:request_generation_tokens",
                                                   "Number of generation tokens processed.", TOKEN_COUNT_BUCKETS)
        self.iteration_tokens = histogram("vllm:iteration_tokens_total",
                                          "Histogram of number of tokens per engine_step.", ITERATION_TOKEN_BUCKETS)
        self.request_max_num_generation_tokens = histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.", TOKEN_COUNT_BUCKETS)
        self.request_params_n = histogram("vllm:request_params_n", "Histogram of the n request parameter.",
                                          PARAMS_N_BUCKETS)
        self.request_params_max_tokens = histogram("vllm:request_params_max_tokens",
                                                   "Histogram of the max_tokens request parameter.",
                                                   TOKEN_COUNT_BUCKETS)
        self.time_to_first_token = histogram("vllm:time_to_first_token_seconds",
                                             "Histogram of time to first token in seconds.", TTFT_BUCKETS)
        self.inter_token_latency = histogram("vllm:inter_token_latency_seconds",
                                             "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.request_time_per_output_token = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.", ITL_BUCKETS)
        self.e2e_request_latency = histogram("vllm:e2e_request_latency_seconds",
                                             "Histogram of e2e request latency in seconds.", REQUEST_LATENCY_BUCKETS)
        self.request_queue_time = histogram("vllm:request_queue_time_seconds",
                                            "Histogram of time spent in WAITING phase for request.",
                                            REQUEST_LATENCY_BUCKETS)
        self.request_inference_time = histogram("vllm:request_inference_time_seconds",
                                                "Histogram of time spent in RUNNING phase for request.",
                                                REQUEST_LATENCY_BUCKETS)
        self.request_prefill_time = histogram("vllm:request_prefill_time_seconds",
                                              "Histogram of time spent in PREFILL phase for request.",
                                              REQUEST_LATENCY_BUCKETS)
        self.request_decode_time = histogram("vllm:request_decode_time_seconds",
                                             "Histogram of time spent in DECODE phase for request.",
                                             REQUEST_LATENCY_BUCKETS)
        self.request_num_preemptions = histogram("vllm:request_num_preemptions",
                                                 "Histogram of the number of times a request was preempted.",
                                                 PREEMPTION_BUCKETS)
        self.request_prefill_kv_computed_tokens = histogram(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).", TOKEN_COUNT_BUCKETS)
        Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", sorted(cache_info),
              registry=registry).labels(**cache_info).set(1)

        self.spec_decode_enabled = spec_tokens > 0
        if self.spec_decode_enabled:
            self.spec_num_drafts = counter("vllm:spec_decode_num_drafts", "Number of spec decoding drafts.")
            self.spec_num_draft_tokens = counter("vllm:spec_decode_num_draft_tokens", "Number of draft tokens.")
            self.spec_num_accepted_tokens = counter("vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens.")
            per_pos = Counter("vllm:spec_decode_num_accepted_tokens_per_pos", "Accepted tokens per draft position.",
                              names + ["position"], registry=registry)
            self.spec_accepted_per_pos = [per_pos.labels(**labels, position=str(p)) for p in range(spec_tokens)]

        # prometheus-fastapi-instrumentator's families (vLLM's API server); children appear per handler on use.
        self.http_requests = Counter("http_requests", "Total number of requests by method, status and handler.",
                                     ["handler", "method", "status"], registry=registry)
        self.http_request_size = Summary("http_request_size_bytes",
                                         f"Content length of incoming requests {_INSTRUMENTATOR_SIZE_HELP}",
                                         ["handler"], registry=registry)
        self.http_response_size = Summary("http_response_size_bytes",
                                          f"Content length of outgoing responses {_INSTRUMENTATOR_SIZE_HELP}",
                                          ["handler"], registry=registry)
        self.http_duration_highr = Histogram(
            "http_request_duration_highr_seconds",
            "Latency with many buckets but no API specific labels. Made for more accurate percentile calculations. ",
            buckets=HTTP_HIGHR_BUCKETS, registry=registry)
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Latency with only few buckets by handler. Made to be only used if aggregation by handler is important. ",
            ["handler", "method"], buckets=HTTP_BUCKETS, registry=registry)

    def render(self) -> bytes:
        """The whole page: the process' python_*/process_* families (shared by all engines, as each vLLM
        process has its own) followed by this engine's families, as on the reference page."""
        if self._rendered is None or self._rendered[0] != self.version:
            version = self.version
            self._rendered = (version, generate_latest(self.registry))
        return _process_families() + self._rendered[1]

    def observe_http(self, handler: str, method: str, status: int, request_bytes: int, response_bytes: int,
                     duration_s: float) -> None:
        self.version += 1
        self.http_requests.labels(handler=handler, method=method, status=f"{status // 100}xx").inc()
        self.http_request_size.labels(handler=handler).observe(request_bytes)
        self.http_response_size.labels(handler=handler).observe(response_bytes)
        self.http_duration_highr.observe(duration_s)
        self.http_duration.labels(handler=handler, method=method).observe(duration_s)


def cache_config_info(engine_index: int, block_size: int, kv_blocks: int, kv_bytes_per_token: int, max_model_len: int,
                      enable_prefix_caching: bool) -> dict[str, str]:
    """vLLM 0.32's CacheConfig labels (names as on the reference page), filled from the simulator's sizing."""
    tokens = kv_blocks * block_size
    return {
        "_block_size_resolved": "True", "block_size": str(block_size), "cache_dtype": "auto",
        "cache_hit_alignment_tokens": "None", "effective_attention_block_size": str(block_size),
        "enable_mamba_shared_prefix_checkpoint": "False", "enable_prefix_caching": str(enable_prefix_caching),
        "engine": str(engine_index),
        "gpu_memory_utilization": "0.92", "hash_block_size": "None", "is_attention_free": "False",
        "kv_cache_dtype_skip_layers": "[]", "kv_cache_layout": "None",
        "kv_cache_max_concurrency": str(tokens / max_model_len), "kv_cache_memory_bytes": str(tokens * kv_bytes_per_token),
        "kv_cache_size_tokens": str(tokens), "kv_offloading_backend": "native", "kv_offloading_size": "None",
        "kv_sharing_fast_prefill": "False", "mamba_block_size": "None", "mamba_cache_dtype": "auto",
        "mamba_cache_mode": "none", "mamba_page_size_padded": "None", "mamba_ssm_cache_dtype": "auto",
        "num_cpu_blocks": "None", "num_gpu_blocks": str(kv_blocks), "num_gpu_blocks_override": "None",
        "prefix_cache_retention_interval": "0", "prefix_caching_hash_algo": "sha256", "prefix_match_unit": "None",
        "replayssm_buffer_len": "16", "skip_page_size_padded": "None", "sliding_window": "None",
        "swa_bounded_replay": "True", "use_kda_recoverssm": "False", "use_replayssm": "False",
        "user_specified_block_size": "False",
    }
