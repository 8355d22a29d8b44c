"""Engine /metrics pages -> canonical Forge series, through the catalog (one fixture page per engine)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from forge.exporters.normalize import Histogram, NormalizeError, normalize

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "metrics"


def page(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def raw_value(text: str, sample_line_prefix: str) -> float:
    """A value straight from the fixture page, to check the normalizer against the source."""
    for line in text.splitlines():
        if line.startswith(sample_line_prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample_line_prefix} not in page")


def by_label(family, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in family.series.items():
        out[dict(key)[label]] = out.get(dict(key)[label], 0.0) + value
    return out


def assert_histogram_is_cumulative(hist: Histogram):
    counts = [c for _, c in hist.buckets]
    assert counts == sorted(counts) and math.isinf(hist.buckets[-1][0]) and counts[-1] == hist.count


# ------------------------------------------------------------------------------------------ per engine

EXPECTED_FAMILIES = {
    "vllm-0.32.txt": ("vllm", "vllm", {
        "forge_ttft_seconds", "forge_itl_seconds", "forge_tpot_seconds", "forge_e2e_latency_seconds",
        "forge_queue_time_seconds", "forge_prefill_time_seconds", "forge_decode_time_seconds",
        "forge_inference_time_seconds", "forge_requests_running", "forge_requests_waiting",
        "forge_kv_cache_usage_ratio", "forge_preemptions_total", "forge_prompt_tokens_total",
        "forge_generation_tokens_total", "forge_requests_total", "forge_prefix_cache_queries_total",
        "forge_prefix_cache_hits_total"}),
    "vllm-0.6.txt": ("vllm", "vllm", {
        "forge_ttft_seconds", "forge_itl_seconds", "forge_e2e_latency_seconds", "forge_queue_time_seconds",
        "forge_requests_running", "forge_requests_waiting", "forge_kv_cache_usage_ratio", "forge_preemptions_total",
        "forge_prompt_tokens_total", "forge_generation_tokens_total", "forge_requests_total",
        "forge_prefix_cache_hit_ratio", "forge_spec_decode_acceptance_ratio", "forge_spec_decode_draft_tokens_total",
        "forge_spec_decode_accepted_tokens_total"}),
    "sglang.txt": ("sglang", "sglang", {
        "forge_ttft_seconds", "forge_itl_seconds", "forge_e2e_latency_seconds", "forge_queue_time_seconds",
        "forge_requests_running", "forge_requests_waiting", "forge_kv_cache_usage_ratio", "forge_preemptions_total",
        "forge_prompt_tokens_total", "forge_generation_tokens_total", "forge_requests_total",
        "forge_prefix_cache_queries_total", "forge_prefix_cache_hits_total", "forge_prefix_cache_hit_ratio",
        "forge_spec_decode_acceptance_ratio", "forge_spec_decode_acceptance_length"}),
    "tgi.txt": ("tgi", "tgi", {
        "forge_tpot_seconds", "forge_e2e_latency_seconds", "forge_queue_time_seconds", "forge_prefill_time_seconds",
        "forge_inference_time_seconds", "forge_requests_running", "forge_requests_waiting",
        "forge_prompt_tokens_total", "forge_generation_tokens_total", "forge_requests_total"}),
    "trtllm.txt": ("trtllm", "trtllm", {
        "forge_ttft_seconds", "forge_tpot_seconds", "forge_e2e_latency_seconds", "forge_queue_time_seconds",
        "forge_prefill_time_seconds", "forge_decode_time_seconds", "forge_inference_time_seconds",
        "forge_requests_running", "forge_requests_waiting", "forge_kv_cache_usage_ratio",
        "forge_prompt_tokens_total", "forge_generation_tokens_total", "forge_requests_total",
        "forge_prefix_cache_queries_total", "forge_prefix_cache_hits_total", "forge_prefix_cache_hit_ratio",
        "forge_spec_decode_draft_tokens_total", "forge_spec_decode_accepted_tokens_total",
        "forge_spec_decode_acceptance_length"}),
    "triton-trtllm.txt": ("triton_trtllm", "trtllm", {
        "forge_ttft_seconds", "forge_requests_running", "forge_requests_waiting", "forge_kv_cache_usage_ratio",
        "forge_requests_total"}),
}


@pytest.mark.parametrize("fixture", sorted(EXPECTED_FAMILIES))
def test_fixture_normalizes_to_the_expected_canonical_families(fixture):
    dialect, engine, families = EXPECTED_FAMILIES[fixture]
    result = normalize(page(fixture), replica="r1", extra_labels={"team": "search", "cost_center": "cc-42"})
    assert result.dialect == dialect and result.engine == engine
    assert set(result.families) == families
    assert result.problems == []
    for family in result.families.values():
        assert family.type in ("counter", "gauge", "histogram")
        for key, value in family.series.items():
            labels = dict(key)
            assert labels["engine"] == engine and labels["replica"] == "r1"
            assert labels["team"] == "search" and labels["cost_center"] == "cc-42" and labels["model"]
            if family.type == "histogram":
                assert isinstance(value, Histogram)
                assert_histogram_is_cumulative(value)
            else:
                assert isinstance(value, float) and not math.isnan(value)


def test_real_vllm_032_page_exact_values():
    text = page("vllm-0.32.txt")
    result = normalize(text, replica="r0")
    ttft = result.families["forge_ttft_seconds"].only()
    assert len(ttft.buckets) == text.count("vllm:time_to_first_token_seconds_bucket{") == 23
    assert ttft.count == 9.0 and ttft.sum == pytest.approx(0.31362318992614746)
    itl = result.families["forge_itl_seconds"].only()
    assert len(itl.buckets) == 20 and itl.count == raw_value(text, "vllm:inter_token_latency_seconds_count")
    assert result.families["forge_prompt_tokens_total"].only() == 104.0
    assert result.families["forge_generation_tokens_total"].only() == 320.0
    assert result.families["forge_prefix_cache_queries_total"].only() == 104.0
    assert dict(next(iter(result.families["forge_kv_cache_usage_ratio"].series)))["model"] == "tiny"
    outcomes = by_label(result.families["forge_requests_total"], "outcome")
    assert outcomes == {"success": 9.0, "aborted": 0.0, "error": 0.0}
    reasons = by_label(result.families["forge_requests_total"], "reason")
    assert reasons["length"] == 9.0 and set(reasons) == {"stop", "length", "abort", "error", "repetition"}
    # vLLM's own `engine="0"` label (engine-core index) must not leak into Forge's `engine` label.
    assert {dict(k)["engine"] for f in result.families.values() for k in f.series} == {"vllm"}
    # Spec decoding was off in this run: its counters are reported missing, not invented.
    assert "forge_spec_decode_accepted_tokens_total" in result.missing
    assert "forge_prefix_cache_hit_ratio" not in result.missing  # superseded by the counters, not missing


def test_old_vllm_names_map_to_the_same_signals():
    text = page("vllm-0.6.txt")
    result = normalize(text)
    assert result.families["forge_kv_cache_usage_ratio"].only() == raw_value(text, "vllm:gpu_cache_usage_perc{")
    itl = result.families["forge_itl_seconds"].only()
    assert len(itl.buckets) == 14 and itl.count == raw_value(text, "vllm:time_per_output_token_seconds_count")
    assert result.families["forge_prefix_cache_hit_ratio"].only() == 0.418
    assert by_label(result.families["forge_requests_total"], "outcome") == {"success": 37.0, "aborted": 3.0}


def test_newer_vllm_name_wins_when_both_are_exposed():
    both = ('# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name="m"} 0.5\n'
            '# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{model_name="m"} 0.9\n')
    assert normalize(both).families["forge_kv_cache_usage_ratio"].only() == 0.5


def test_data_parallel_engines_are_combined_sum_for_counts_max_for_usage():
    text = ('# TYPE vllm:num_requests_running gauge\n'
            'vllm:num_requests_running{engine="0",model_name="m"} 3\nvllm:num_requests_running{engine="1",model_name="m"} 4\n'
            '# TYPE vllm:kv_cache_usage_perc gauge\n'
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2\nvllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.7\n'
            '# TYPE vllm:time_to_first_token_seconds histogram\n'
            + "".join(f'vllm:time_to_first_token_seconds_bucket{{engine="{e}",model_name="m",le="{le}"}} {c}\n'
                      for e, (a, b) in (("0", (1, 2)), ("1", (3, 5))) for le, c in (("0.1", a), ("+Inf", b)))
            + 'vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 2\nvllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.3\n'
            'vllm:time_to_first_token_seconds_count{engine="1",model_name="m"} 5\nvllm:time_to_first_token_seconds_sum{engine="1",model_name="m"} 0.9\n')
    result = normalize(text)
    assert result.families["forge_requests_running"].only() == 7.0
    assert result.families["forge_kv_cache_usage_ratio"].only() == 0.7
    ttft = result.families["forge_ttft_seconds"].only()
    assert ttft.buckets == [(0.1, 4.0), (math.inf, 7.0)] and ttft.count == 7.0 and ttft.sum == pytest.approx(1.2)


def test_sglang_exact_values():
    result = normalize(page("sglang.txt"))
    assert len(result.families["forge_itl_seconds"].only().buckets) == 24
    assert len(result.families["forge_queue_time_seconds"].only().buckets) == 37
    assert by_label(result.families["forge_requests_total"], "outcome") == {"success": 200.0, "aborted": 4.0}
    assert result.families["forge_prefix_cache_hits_total"].only() == 152440.0
    assert result.families["forge_kv_cache_usage_ratio"].only() == 0.61
    assert dict(next(iter(result.families["forge_ttft_seconds"].series)))["model"] == "meta-llama/Llama-3.1-8B-Instruct"


def test_older_sglang_tpot_name_falls_back_to_itl():
    text = ('# TYPE sglang:time_per_output_token_seconds histogram\n'
            'sglang:time_per_output_token_seconds_bucket{le="0.01",model_name="m"} 73.0\n'
            'sglang:time_per_output_token_seconds_bucket{le="+Inf",model_name="m"} 100.0\n'
            'sglang:time_per_output_token_seconds_sum{model_name="m"} 1.5\n'
            'sglang:time_per_output_token_seconds_count{model_name="m"} 100.0\n')
    assert normalize(text).families["forge_itl_seconds"].only().count == 100.0


def test_tgi_exact_values_and_model_from_caller():
    text = page("tgi.txt")
    result = normalize(text, model="llama-3.1-8b", replica="tgi-0")
    tpot = result.families["forge_tpot_seconds"].only()
    assert len(tpot.buckets) == 36 and tpot.count == 120.0  # 35 geometric bounds + +Inf
    assert tpot.buckets[0][0] == pytest.approx(0.00015)
    assert result.families["forge_prefill_time_seconds"].only().count == 97.0  # method="prefill" only
    requests = result.families["forge_requests_total"]
    assert by_label(requests, "outcome") == {"success": 120.0, "error": 3.0}
    assert by_label(requests, "reason") == {"success": 120.0, "validation": 2.0, "generation": 1.0}
    assert result.families["forge_prompt_tokens_total"].only() == raw_value(text, "tgi_request_input_length_sum")
    assert {dict(k)["model"] for f in result.families.values() for k in f.series} == {"llama-3.1-8b"}
    assert "forge_ttft_seconds" in result.unavailable and "forge_kv_cache_usage_ratio" in result.unavailable


def test_trtllm_serve_exact_values():
    result = normalize(page("trtllm.txt"))
    requests = result.families["forge_requests_total"]
    assert by_label(requests, "outcome") == {"success": 80.0, "error": 2.0}
    assert by_label(requests, "reason")["500"] == 2.0
    assert len(result.families["forge_tpot_seconds"].only().buckets) == 20
    assert result.families["forge_kv_cache_usage_ratio"].only() == 0.4375
    assert result.families["forge_spec_decode_accepted_tokens_total"].only() == 6300.0


def test_triton_millisecond_buckets_become_seconds_and_ensemble_is_not_double_counted():
    text = page("triton-trtllm.txt")
    result = normalize(text)
    ttft = result.families["forge_ttft_seconds"].only()
    assert [le for le, _ in ttft.buckets[:3]] == pytest.approx([0.001, 0.005, 0.01])
    assert ttft.buckets[-2][0] == pytest.approx(5.0)
    assert ttft.sum == pytest.approx(raw_value(text, 'nv_inference_first_response_histogram_ms_sum') / 1000)
    assert ttft.count == 148.0
    # Every model of the ensemble counts the request; only the TensorRT-LLM model's count is kept.
    assert by_label(result.families["forge_requests_total"], "outcome") == {"success": 148.0, "error": 2.0}
    assert result.families["forge_requests_running"].only() == 9.0
    assert result.families["forge_kv_cache_usage_ratio"].only() == 0.375


def test_triton_older_backend_kv_usage_from_used_over_max_and_never_divides_by_zero():
    def kv(used, max_):
        return ('# TYPE nv_trt_llm_kv_cache_block_metrics gauge\n'
                f'nv_trt_llm_kv_cache_block_metrics{{kv_cache_block_type="used",model="tensorrt_llm",version="1"}} {used}\n'
                f'nv_trt_llm_kv_cache_block_metrics{{kv_cache_block_type="max",model="tensorrt_llm",version="1"}} {max_}\n')
    assert normalize(kv(1560, 6240)).families["forge_kv_cache_usage_ratio"].only() == 0.25
    empty = normalize(kv(0, 0))
    assert "forge_kv_cache_usage_ratio" not in empty.families and "forge_kv_cache_usage_ratio" in empty.missing


def test_dcgm_page_keeps_field_names_and_gpu_labels():
    text = ('# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).\n# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n'
            'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-1a2b",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1"} 87\n'
            'DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-3c4d",device="nvidia1",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1"} 12\n'
            '# TYPE DCGM_FI_DEV_FB_USED gauge\n'
            'DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-1a2b",device="nvidia1",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1"} 71234\n')
    result = normalize(text, replica="node-1")
    assert result.dialect == "dcgm" and result.engine is None
    util = result.families["DCGM_FI_DEV_GPU_UTIL"]
    assert by_label(util, "gpu") == {"0": 87.0, "1": 12.0}
    labels = dict(next(iter(util.series)))
    assert labels["UUID"].startswith("GPU-") and "engine" not in labels and "model" not in labels


# ------------------------------------------------------------------------------------------ output

def test_exposition_round_trips_through_prometheus_parser():
    result = normalize(page("vllm-0.32.txt"), replica="r0", extra_labels={"team": "search"})
    text = result.to_prometheus_text()
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed["forge_ttft_seconds"].type == "histogram"
    buckets = [s for s in parsed["forge_ttft_seconds"].samples if s.name == "forge_ttft_seconds_bucket"]
    assert len(buckets) == 23 and buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 9.0
    assert parsed["forge_requests"].type == "counter"  # the parser strips _total from counter family names
    assert all(s.labels["team"] == "search" for f in parsed.values() for s in f.samples)
    assert not re.search(r'engine="0"', text)


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("garbage,needle", [
    ("<!doctype html><html><body>Not Found</body></html>", "HTML"),
    ("\x00\x01\x02\x7f binary", "binary"),
    ("", "empty"),
    ("   \n\n", "empty"),
    ('{"iterationCounter": 1, "kvCacheStats": {}}', "JSON"),
    ('vllm:num_requests_running{model_name="m" 1\n', "not valid Prometheus text"),
    ("# TYPE node_load1 gauge\nnode_load1 0.5\n", "no known engine"),
    ("# only a comment\n", "no samples"),
])
def test_garbage_raises_one_clear_line(garbage, needle):
    with pytest.raises(NormalizeError) as err:
        normalize(garbage)
    message = str(err.value)
    assert needle in message and "\n" not in message and len(message) < 200


def test_bytes_are_refused_with_a_hint():
    with pytest.raises(NormalizeError, match="decode it as UTF-8"):
        normalize(b"vllm:num_requests_running 1\n")  # type: ignore[arg-type]


@pytest.mark.parametrize("labels,needle", [({"engine": "x"}, "reserved"), ({"outcome": "x"}, "reserved"),
                                           ({"bad-name": "x"}, "not a valid Prometheus label name")])
def test_bad_extra_labels_are_refused(labels, needle):
    with pytest.raises(NormalizeError, match=needle):
        normalize(page("sglang.txt"), extra_labels=labels)


def test_unknown_engine_is_refused_and_explicit_engine_skips_detection():
    with pytest.raises(NormalizeError, match="unknown — use one of"):
        normalize(page("sglang.txt"), engine="llamacpp")
    forced = normalize(page("sglang.txt"), engine="vllm")
    assert forced.families == {} and "forge_ttft_seconds" in forced.missing


def test_histogram_without_inf_bucket_is_skipped_not_invented():
    text = ('# TYPE vllm:e2e_request_latency_seconds histogram\n'
            'vllm:e2e_request_latency_seconds_bucket{le="1.0",model_name="m"} 3\n'
            'vllm:e2e_request_latency_seconds_sum{model_name="m"} 1.0\nvllm:e2e_request_latency_seconds_count{model_name="m"} 3\n'
            '# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m"} NaN\n')
    result = normalize(text)
    assert "forge_e2e_latency_seconds" not in result.families
    assert any("+Inf" in p for p in result.problems)
    assert "forge_requests_running" not in result.families  # NaN is no data, never a value


# ------------------------------------------------------------------ fast parser vs prometheus_client's parser
#
# normalize() reads plain exposition lines with its own parser and hands anything unusual to prometheus_client.
# These tests hold the two paths to the same NormalizedPage (or the same error) on every fixture page and on
# tricky and broken pages.

import random  # noqa: E402

from forge.exporters import normalize as normalize_module  # noqa: E402
from forge.catalog import get_catalog  # noqa: E402
from forge.exporters.normalize import parse_page  # noqa: E402

ALL_FIXTURES = sorted(FIXTURES.glob("*.txt")) + sorted((FIXTURES.parent / "exporter").glob("*.txt"))


def outcome(text, parser, **kwargs):
    """What normalize() gives: the page, or the error's messages and reason."""
    try:
        result = normalize(text, parser=parser, **kwargs)
    except NormalizeError as exc:
        return ("error", exc.messages, exc.reason)
    return ("page", result.dialect, result.engine, result.families, result.missing, result.unavailable,
            result.problems, result.to_prometheus_text())


def takes_fast_path(text) -> bool:
    try:
        normalize_module._tokenize(text)
    except normalize_module._Unusual:
        return False
    return True


def assert_same(text, *, fast_path=None, **kwargs):
    fast, reference = outcome(text, "fast", **kwargs), outcome(text, "prometheus_client", **kwargs)
    assert fast == reference
    if fast_path is not None:
        assert takes_fast_path(text) is fast_path
    return fast


def test_fixture_list_covers_every_engine_and_the_gpu_exporter():
    assert {p.name for p in ALL_FIXTURES} >= set(EXPECTED_FAMILIES) | {"dcgm-exporter.txt"}


@pytest.mark.parametrize("fixture", ALL_FIXTURES, ids=lambda p: p.name)
def test_fast_parser_gives_exactly_the_reference_page_on_every_fixture(fixture):
    text = fixture.read_text(encoding="utf-8")
    engine = "dcgm" if fixture.parent.name == "exporter" else None
    result = assert_same(text, fast_path=True, engine=engine, replica="r-1", extra_labels={"team": "search"})
    assert result[0] == "page" and result[3], "the fixture must normalize to some series"
    # also with the engine named and a model given, the other way normalize() is called
    dialect = result[1]
    assert_same(text, engine=dialect, model="m-override", replica="r-2")


@pytest.mark.parametrize("fixture", ALL_FIXTURES, ids=lambda p: p.name)
def test_fast_parser_keeps_every_mapped_sample_and_drops_only_unmapped_families(fixture):
    text = fixture.read_text(encoding="utf-8")
    engine = "dcgm" if fixture.parent.name == "exporter" else None
    fast, reference = parse_page(text, engine=engine), parse_page(text, parser="prometheus_client")
    assert fast.families.keys() == reference.families.keys()            # detection sees every family
    assert {n: f.type for n, f in fast.families.items()} == {n: f.type for n, f in reference.families.items()}
    dialect = normalize_module.detect_dialect(reference) if engine is None else engine
    wanted, prefix = normalize_module._wanted_names(get_catalog(), dialect)
    for name in wanted:
        assert fast.samples_by_name.get(name, []) == reference.samples_by_name.get(name, [])
        if name in reference.families:
            assert fast.families[name].samples == reference.families[name].samples
    dropped = [n for n, f in fast.families.items() if not f.samples and reference.families[n].samples]
    assert all(n not in wanted for n in dropped)
    if fixture.name == "vllm-0.32.txt":   # python_gc_*, process_*, http_* are read, checked and not kept
        assert "process_cpu_seconds" in dropped and "python_gc_objects_collected" in dropped


def vllm_page(label_value_as_written: str, extra_lines: str = "") -> str:
    return ('# HELP vllm:num_requests_running Running.\n# TYPE vllm:num_requests_running gauge\n'
            f'vllm:num_requests_running{{engine="0",model_name="{label_value_as_written}"}} 3.0\n'
            '# TYPE vllm:num_requests_waiting gauge\n'
            f'vllm:num_requests_waiting{{model_name="{label_value_as_written}",engine="0",}} 2\n' + extra_lines)


@pytest.mark.parametrize("written,meant", [
    (r'a\"b', 'a"b'), (r'a\\b', 'a\\b'), (r'a\nb', 'a\nb'), (r'\\n', '\\n'), (r'\\\"', '\\"'),
    (r'x\\', 'x\\'), (r'{,}=#"', None), ('', ''), ('ünï cödé ✓', 'ünï cödé ✓'), ('a } b , c="d"', None),
])
def test_escaped_label_values_read_as_prometheus_client_reads_them(written, meant):
    if meant is None:  # a value that isn't a valid label value: both parsers refuse the page
        result = assert_same(vllm_page(written))
        assert result[0] == "error"
        return
    result = assert_same(vllm_page(written), fast_path=True, replica="r")
    assert result[3]["forge_requests_running"].only() == 3.0
    key = next(iter(result[3]["forge_requests_running"].series))
    assert dict(key)["model"] == (meant or "unknown")


@pytest.mark.parametrize("written", [r'a\tb', r'a\b', 'a\\', r'a\x41'])
def test_odd_escapes_go_to_prometheus_client(written):
    assert not takes_fast_path(vllm_page(written))
    assert_same(vllm_page(written), replica="r")


GARBAGE_LINES = [
    'vllm:num_requests_swapped{model_name="m"} 1 # {trace_id="abc"} 1.0',          # exemplar
    '# EOF', 'vllm:num_requests_swapped{model_name="m"} 1 1700000000000',           # timestamp
    'vllm:num_requests_swapped{model_name="m"} 1 2 3', 'vllm:num_requests_swapped{model_name="m"}',
    'vllm:num_requests_swapped{model_name="m"} 1_000', 'vllm:num_requests_swapped{model_name="m"} -0',
    'vllm:num_requests_swapped{model_name="m"} ' + "9" * 400, 'vllm:num_requests_swapped{model_name="m"} 1e999',
    'vllm:num_requests_swapped{model_name="m"} nan', 'vllm:num_requests_swapped{model_name="m"} +Inf',
    'vllm:num_requests_swapped { model_name = "m" } 1', 'vllm:num_requests_swapped{model_name="m"}\t1',
    'vllm:num_requests_swapped{model_name="m",model_name="n"} 1', 'vllm:num_requests_swapped{__name__="x"} 1',
    'vllm:num_requests_swapped{__x="y"} 1', 'vllm:num_requests_swapped{a:b="y"} 1', '{__name__="vllm:x"} 1',
    'vllm:num_requests_swapped{model_name="m" 1', 'vllm:num_requests_swapped{model_name=m} 1',
    'vllm:num_requests_swapped{model_name="m"}1', 'bad-name 1', 'bad-name{a="b"} 1', '# TYPE x', '# TYPE x info',
    '# TYPE vllm:num_requests_running counter', '# HELP', '#HELP x y', '# some TYPE of comment', '#  HELP x y',
    '# TYPE vllm:num_requests_waiting histogram', 'vllm:num_requests_running{engine="0",model_name="m"} 4',
    'vllm:num_requests_waiting{engine="0",model_name="m"} 5', 'process_open_fds 1\nprocess_open_fds 2',
    'python_gc{a="1",b="2"} 1\npython_gc{b="2",a="1"} 1', 'python_gc{a="1"} 1\npython_gc{a="1",} 1',
    '# TYPE python_info gauge\npython_info 1\n# TYPE python_info counter\npython_info_total 1',
    'vllm:num_requests_swapped{model_name="m"} 1\r', '\x0bvllm:num_requests_swapped 1', 'x 1\x1c',
    '# TYPE c counter\nc 1\nc_total 2', '# TYPE c_total counter\nc_total 1\nc 2',
    '# TYPE s summary\ns{quantile="0.5"} 1\ns_sum 2\ns_count 3\ns_created 4',
    '# TYPE h histogram\nh_bucket{le="1"} 1\nh_created 1\nh_bucket{le="+Inf"} 1\nh_count 1',
]


@pytest.mark.parametrize("line", GARBAGE_LINES)
def test_unusual_and_broken_lines_give_the_reference_result(line):
    for position in ("start", "end"):
        text = vllm_page("m", line + "\n") if position == "end" else line + "\n" + vllm_page("m")
        assert_same(text, replica="r")
        assert_same(text, replica="r", engine="vllm")


def test_duplicate_series_in_an_unmapped_family_is_still_refused():
    text = vllm_page("m", '# TYPE python_gc gauge\npython_gc{a="1",b="2"} 1\npython_gc{b="2",a="1"} 1\n')
    with pytest.raises(NormalizeError, match="appears more than once") as fast:
        normalize(text)
    assert fast.value.reason == "duplicate_series" and takes_fast_path(text)


def test_histogram_rules_hold_on_the_fast_path():
    text = ('# TYPE vllm:e2e_request_latency_seconds histogram\n'
            'vllm:e2e_request_latency_seconds_bucket{le="1.0",model_name="m"} 3\n'
            'vllm:e2e_request_latency_seconds_sum{model_name="m"} 1.0\nvllm:e2e_request_latency_seconds_count{model_name="m"} 3\n'
            '# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m"} NaN\n')
    assert takes_fast_path(text)
    result = assert_same(text)
    assert any("+Inf" in p for p in result[6]) and "forge_requests_running" not in result[3]
    triton = page("triton-trtllm.txt")
    assert takes_fast_path(triton)   # its millisecond buckets become seconds on the fast path too
    assert_same(triton)


def mutate(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(lines))
        line = lines[i]
        op = rng.randrange(6)
        pos = rng.randrange(len(line) + 1)
        if op == 0:
            lines[i] = line[:pos] + rng.choice('"\\{},= #\t\nx_:.-+eE0') + line[pos:]
        elif op == 1:
            lines[i] = line[:pos] + line[pos + 1:]
        elif op == 2:
            lines.insert(rng.randrange(len(lines)), line)                    # a repeated line
        elif op == 3:
            lines[i] = line.replace("0", rng.choice(["-0", "NaN", "1e5", "+Inf", "0x1"]), 1)
        elif op == 4:
            lines[i] = line.replace('"', '\\"', 1)
        else:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


@pytest.mark.parametrize("fixture", ["vllm-0.6.txt", "sglang.txt", "triton-trtllm.txt"])
def test_randomly_damaged_pages_give_the_reference_result(fixture):
    rng = random.Random(fixture)     # fixed seed: the same pages every run
    text = page(fixture)
    for _ in range(150):
        assert_same(mutate(rng, text), replica="r")


def test_parser_option_is_checked():
    with pytest.raises(ValueError, match="parser"):
        normalize(page("sglang.txt"), parser="regex")


def test_a_bucket_bound_that_is_not_a_number_is_a_clear_error():
    page = ("# TYPE vllm:time_to_first_token_seconds histogram\n"
            'vllm:time_to_first_token_seconds_bucket{engine="0",model_name="m",le="1NaN.0"} 1\n'
            'vllm:time_to_first_token_seconds_bucket{engine="0",model_name="m",le="+Inf"} 1\n'
            'vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 1\n'
            'vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.1\n')
    for parser in ("fast", "prometheus_client"):
        with pytest.raises(NormalizeError) as caught:
            normalize(page, engine="vllm", parser=parser)
        assert "le='1NaN.0' is not a number" in caught.value.messages[0] and caught.value.reason == "invalid_page"
