"""Report writers: JSON shape, SARIF structure, JUnit counts, self-contained and escaped HTML, Markdown tables."""

from __future__ import annotations

import copy
import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from forge.errors import InputError
from forge.readiness.reports import FORMATS, print_table, render
from forge.readiness.result import DIMENSIONS, GATING_DIMENSIONS, Assessment, Finding
from forge.readiness.scoring import score_dimension, verdict

ROOT = Path(__file__).resolve().parents[1]
EVIL = "<script>alert('x')</script> \"quoted\" & 'single' | pipe"


def _finding(check: str, dimension: str, severity: str, status: str, **kw) -> Finding:
    defaults = dict(
        title=f"{check} title", message=f"{check} message", evidence={}, remediation=f"Fix {check}.",
        path=f"{dimension}.field", line=10, column=3,
    )
    defaults.update(kw)
    return Finding(check=check, dimension=dimension, severity=severity, status=status, **defaults)


def _assessment(file: str, deployment: str, findings: list[Finding], capacity: dict | None = None) -> Assessment:
    """Scores and verdict from the real scorer, so the fixtures are consistent the way real assessments are."""
    dims = [score_dimension(d, findings) for d in DIMENSIONS]
    result, total, reasons = verdict(dims, findings)
    return Assessment(forge_version="0.1.0", file=file, deployment=deployment, verdict=result, score=total,
                      dimensions=dims, findings=findings, as_of="2026-11-23", verdict_reasons=reasons,
                      capacity=capacity or {})


CAPACITY = {
    "gpu": "H100-SXM-80GB", "gpus_per_replica": 2, "kv_tokens_per_replica": 460208, "max_concurrent_sequences": 195,
    "fits": True, "fit_reason": "weights 33.85 GiB/GPU, KV cache 35.11 GiB/GPU",
    "growth": [
        {"multiplier": 1.0, "replicas_needed": 4, "replicas_with_headroom": 5, "cost_per_hour": 38.178},
        {"multiplier": 3.0, "replicas_needed": 10, "replicas_with_headroom": 13, "cost_per_hour": 99.414},
        {"multiplier": 10.0, "replicas_needed": 34, "cost_per_hour": 313.74},  # a missing key is tolerated
    ],
}


def ready_assessment() -> Assessment:
    findings = [_finding(f"{p}-001", d, "high", "pass") for p, d in
                zip(("COR", "PERF", "REL", "OBS", "DEP", "COST", "SEC", "OPS"), DIMENSIONS)]
    findings.append(_finding("PERF-008", "performance", "low", "warn", message="no load test results",
                             path="evidence.load_results", line=129))
    return _assessment("deploy/chat.yaml", "chat-70b", findings, CAPACITY)


def not_ready_assessment() -> Assessment:
    findings = [
        _finding("REL-004", "reliability", "high", "fail", title="A progress watchdog backs the liveness probe",
                 message=f"liveness is /health only {EVIL}", evidence={"http_path": "/health", "note": EVIL,
                                                                       "nested": {"a": [1, 2]}},
                 remediation="Enable reliability.liveness.progress_watchdog.", path="reliability.liveness", line=56,
                 column=5),
        _finding("REL-001", "reliability", "critical", "fail", title="Spot capacity drains before reclaim",
                 message="spot without drain", path="reliability.spot_drain", line=40),
        _finding("OBS-007", "observability", "high", "warn", title="Every alert links to a runbook",
                 message="1 alert without runbook", path="observability.alerts", line=65),
        _finding("SEC-003", "security", "critical", "fail", title="Weights are verified",
                 message="weights unsigned", path="model.weights.signed", line=20),
        _finding("COST-002", "cost", "medium", "waived", title="Metering labels", message="no chargeback labels",
                 waiver={"reason": f"finance migration {EVIL}", "expires": "2027-01-31"}, line=7),
        _finding("COR-001", "correctness", "high", "pass", title="Input is validated", message="ok"),
        _finding("DEP-002", "deployment", "low", "not_applicable", title="Canary analysis",
                 message="strategy is recreate"),
        _finding("OPS-001", "operations", "high", "pass", title="On-call rotation", message="ok"),
        _finding("PERF-001", "performance", "high", "pass", title="Sized on p95", message="ok"),
    ]
    return _assessment("deploy/summarizer.yaml", "summarizer <8b>", findings)


@pytest.fixture
def ready() -> Assessment:
    return ready_assessment()


@pytest.fixture
def not_ready() -> Assessment:
    return not_ready_assessment()


def test_fixtures_are_what_the_tests_claim(ready, not_ready):
    assert ready.verdict == "ready"
    assert not_ready.verdict == "not_ready"
    assert {f.status for f in not_ready.findings} == {"fail", "warn", "waived", "pass", "not_applicable"}


# ---------------------------------------------------------------------------------------------------- dispatch
def test_formats_and_unknown_format(ready):
    assert FORMATS == ("table", "json", "markdown", "html", "sarif", "junit")
    for fmt in FORMATS:
        assert render([ready], fmt).strip()
    with pytest.raises(InputError, match="unknown format"):
        render([ready], "yaml")
    with pytest.raises(InputError, match="--fail-on"):
        render([ready], "junit", fail_on="pass")


def test_importing_reports_does_not_import_rich_or_jinja():
    code = ("import sys; import forge.readiness.reports as r; "
            "print(any(m.split('.')[0] in ('rich', 'jinja2') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -------------------------------------------------------------------------------------------------------- json
def test_json_one_object_for_one_array_for_several(ready, not_ready):
    one = json.loads(render([not_ready], "json"))
    assert one == json.loads(json.dumps(not_ready.to_dict()))
    assert set(one) >= {"forge_version", "file", "deployment", "verdict", "score", "dimensions", "findings"}
    assert [d["id"] for d in one["dimensions"]] == list(DIMENSIONS)
    assert {"check", "dimension", "severity", "status", "title", "message", "evidence", "remediation"} <= set(
        one["findings"][0])
    several = json.loads(render([ready, not_ready], "json"))
    assert isinstance(several, list) and [a["deployment"] for a in several] == ["chat-70b", "summarizer <8b>"]


# ------------------------------------------------------------------------------------------------------- sarif
def test_sarif_structure(ready, not_ready):
    log = json.loads(render([ready, not_ready], "sarif"))
    assert log["$schema"] == "https://json.schemastore.org/sarif-2.1.0.json"
    assert log["version"] == "2.1.0"
    assert len(log["runs"]) == 1
    driver = log["runs"][0]["tool"]["driver"]
    assert driver["name"] == "Forge" and driver["version"] == "0.1.0"
    assert driver["informationUri"].startswith("https://")
    rules = driver["rules"]
    seen = {f.check for a in (ready, not_ready) for f in a.findings}
    assert [r["id"] for r in rules] == sorted(seen)
    for r in rules:
        for key in ("name", "shortDescription", "fullDescription", "help", "defaultConfiguration", "properties"):
            assert key in r, (r["id"], key)
        assert r["help"]["text"] and r["help"]["markdown"]
        assert r["defaultConfiguration"]["level"] in ("error", "warning", "note")
        assert re.fullmatch(r"[A-Za-z0-9]+", r["name"])
        dim = next(f.dimension for a in (ready, not_ready) for f in a.findings if f.check == r["id"])
        assert dim in r["properties"]["tags"]
        if dim == "security":
            assert 0 < float(r["properties"]["security-severity"]) <= 10
            assert isinstance(r["properties"]["security-severity"], str)
        else:
            assert "security-severity" not in r["properties"]

    results = log["runs"][0]["results"]
    expected = [(a, f) for a in (ready, not_ready) for f in a.findings if f.status in ("fail", "warn", "waived")]
    assert len(results) == len(expected) == 6
    for res in results:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["message"]["text"]
        loc = res["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"]["uriBaseId"] == "%SRCROOT%"
        assert loc["region"]["startLine"] >= 1 and loc["region"]["startColumn"] >= 1
        assert res["partialFingerprints"]
    by_rule = {r["ruleId"]: r for r in results}
    assert by_rule["REL-004"]["level"] == "error"
    assert by_rule["OBS-007"]["level"] == "warning"
    assert by_rule["PERF-008"]["level"] == "warning"
    rel = by_rule["REL-004"]["locations"][0]["physicalLocation"]
    assert rel["artifactLocation"]["uri"] == "deploy/summarizer.yaml"
    assert rel["region"] == {"startLine": 56, "startColumn": 5}
    waived = by_rule["COST-002"]
    assert waived["suppressions"] == [{"kind": "external", "justification": f"finance migration {EVIL} "
                                                                            "(until 2027-01-31)"}]
    assert not any("suppressions" in r for r in results if r["ruleId"] != "COST-002")
    assert "COR-001" not in by_rule and "DEP-002" not in by_rule  # pass and not_applicable are not results


def test_sarif_fingerprints_are_stable_and_distinct(not_ready):
    a = json.loads(render([not_ready], "sarif"))["runs"][0]["results"]
    moved = copy.deepcopy(not_ready)
    for f in moved.findings:
        f.line += 7  # lines move, the alert stays the same alert
    b = json.loads(render([moved], "sarif"))["runs"][0]["results"]
    fp = [r["partialFingerprints"] for r in a]
    assert fp == [r["partialFingerprints"] for r in b]
    assert len({json.dumps(x, sort_keys=True) for x in fp}) == len(fp)


def test_sarif_uri_relative_to_base_dir(tmp_path, not_ready):
    deploy = tmp_path / "services" / "my app" / "deploy.yaml"
    not_ready.file = str(deploy)
    log = json.loads(render([not_ready], "sarif", base_dir=tmp_path))
    art = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert art == {"uri": "services/my%20app/deploy.yaml", "uriBaseId": "%SRCROOT%"}
    # Outside base_dir: an absolute file URI, without a base id.
    log = json.loads(render([not_ready], "sarif", base_dir=tmp_path / "elsewhere"))
    art = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert art["uri"].startswith("file:///") and "uriBaseId" not in art


def test_sarif_validates_against_sarif_schema_subset(not_ready):
    """The parts of the SARIF 2.1.0 schema GitHub reads, as a JSON Schema (jsonschema is a dev dependency)."""
    jsonschema = pytest.importorskip("jsonschema")
    message = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "minLength": 1}}}
    schema = {
        "type": "object", "required": ["version", "runs", "$schema"],
        "properties": {
            "version": {"const": "2.1.0"},
            "runs": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["tool", "results"],
                "properties": {
                    "tool": {"type": "object", "required": ["driver"], "properties": {"driver": {
                        "type": "object", "required": ["name", "rules"],
                        "properties": {"informationUri": {"type": "string", "format": "uri"},
                                       "rules": {"type": "array", "items": {
                                           "type": "object", "required": ["id"],
                                           "properties": {"shortDescription": message, "fullDescription": message,
                                                          "defaultConfiguration": {"type": "object", "properties": {
                                                              "level": {"enum": ["none", "note", "warning",
                                                                                 "error"]}}}}}}}}}},
                    "results": {"type": "array", "items": {
                        "type": "object", "required": ["ruleId", "message", "locations"],
                        "properties": {
                            "level": {"enum": ["none", "note", "warning", "error"]},
                            "ruleIndex": {"type": "integer", "minimum": 0},
                            "message": message,
                            "suppressions": {"type": "array", "items": {
                                "type": "object", "required": ["kind"],
                                "properties": {"kind": {"enum": ["inSource", "external"]}}}},
                            "partialFingerprints": {"type": "object",
                                                    "additionalProperties": {"type": "string"}},
                            "locations": {"type": "array", "minItems": 1, "items": {
                                "type": "object", "required": ["physicalLocation"], "properties": {
                                    "physicalLocation": {
                                        "type": "object", "required": ["artifactLocation", "region"],
                                        "properties": {
                                            "artifactLocation": {"type": "object", "required": ["uri"]},
                                            "region": {"type": "object", "required": ["startLine"], "properties": {
                                                "startLine": {"type": "integer", "minimum": 1},
                                                "startColumn": {"type": "integer", "minimum": 1}}}}}}}}}}}}}},
        },
    }
    jsonschema.validate(json.loads(render([not_ready], "sarif")), schema)


# ------------------------------------------------------------------------------------------------------- junit
def _junit(assessments, **kw) -> ET.Element:
    return ET.fromstring(render(assessments, "junit", **kw).encode("utf-8"))


def test_junit_counts(ready, not_ready):
    root = _junit([ready, not_ready])
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["deploy/chat.yaml", "deploy/summarizer.yaml"]
    s = suites[1]
    cases = s.findall("testcase")
    assert len(cases) == len(not_ready.findings) == int(s.get("tests"))
    assert len(s.findall("testcase/failure")) == 3 == int(s.get("failures"))  # REL-004, REL-001, SEC-003
    assert len(s.findall("testcase/skipped")) == 2 == int(s.get("skipped"))   # waived + not_applicable
    assert int(root.get("tests")) == len(ready.findings) + len(not_ready.findings)
    rel = next(c for c in cases if c.get("name").startswith("REL-004 "))
    assert rel.get("classname") == "forge.reliability"
    assert rel.get("name") == "REL-004 A progress watchdog backs the liveness probe"
    failure = rel.find("failure")
    assert failure.get("type") == "high" and EVIL in failure.get("message")
    assert "Enable reliability.liveness.progress_watchdog." in failure.text and "http_path: /health" in failure.text
    obs = next(c for c in cases if c.get("name").startswith("OBS-007 "))
    assert obs.find("failure") is None and "1 alert without runbook" in obs.find("system-out").text
    waived = next(c for c in cases if c.get("name").startswith("COST-002 "))
    assert waived.find("skipped").get("message").startswith("waived: finance migration")
    props = {p.get("name"): p.get("value") for p in s.find("properties")}
    assert props["verdict"] == "not_ready" and props["deployment"] == "summarizer <8b>"


def test_junit_fail_on_warn_turns_warnings_into_failures(not_ready):
    s = _junit([not_ready], fail_on="warn").find("testsuite")
    assert int(s.get("failures")) == 4
    obs = next(c for c in s.findall("testcase") if c.get("name").startswith("OBS-007 "))
    assert obs.find("failure") is not None and obs.find("system-out") is None


def test_junit_survives_control_characters(not_ready):
    not_ready.findings[0].message = "terminal \x1b[31mred\x1b[0m and NUL \x00"
    root = _junit([not_ready])  # parses: no character XML 1.0 forbids is left in
    messages = [f.get("message") for f in root.iter("failure")]
    assert any(m.startswith("terminal \ufffd[31mred") for m in messages), messages


# -------------------------------------------------------------------------------------------------------- html
class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> _Collector:
    c = _Collector()
    c.feed(html)
    return c


def test_html_is_self_contained(ready, not_ready):
    html = render([ready, not_ready], "html")
    parsed = _parse(html)
    for tag, attrs in parsed.tags:
        assert tag != "script", "no scripts at all"
        assert tag != "link", "no external stylesheets or fonts"
        for name in ("src", "href", "xlink:href", "action", "srcset", "data", "poster"):
            value = (attrs.get(name) or "").strip().lower()
            assert not re.match(r"^(https?:)?//", value), (tag, name, value)
            if name == "href":
                assert value == "" or value.startswith("#"), (tag, value)
    lowered = html.lower()
    assert "<script" not in lowered
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", lowered)
    assert "@import" not in lowered and "@font-face" not in lowered
    assert not re.search(r"(src|href)\s*=\s*['\"]?\s*(https?:)?//", lowered)
    # The CSP forbids fetching anything, should a future edit slip.
    assert "default-src 'none'" in html


def test_html_escapes_user_text(not_ready):
    html = render([not_ready], "html")
    assert "<script>" not in html
    assert "&lt;script&gt;alert(" in html
    assert "summarizer &lt;8b&gt;" in html
    text = "".join(_parse(html).text)
    assert EVIL in text  # shown, as text, in the message, the evidence table and the waiver
    assert text.count("<script>alert('x')</script>") >= 3


def test_html_content(ready, not_ready):
    html = render([not_ready], "html")
    text = " ".join(" ".join(_parse(html).text).split())
    assert "NOT READY" in text and str(not_ready.score) in text
    for reason in not_ready.verdict_reasons:
        assert " ".join(reason.split()) in text
    for dim in DIMENSIONS.values():
        assert dim in text
    for g in GATING_DIMENSIONS:
        assert DIMENSIONS[g] in text
    assert "How the verdict is decided" in text
    assert html.count("<svg") >= 2  # score ring and dimension chart
    for f in not_ready.findings:
        assert f.check in text
    assert "deploy/summarizer.yaml:56" in text and "reliability.liveness" in text
    # Passed and not-applicable checks are collapsed.
    details = html.split("<details", 1)[1]
    assert "COR-001" in details and "DEP-002" in details
    # Fail before warn before waived in the page order.
    assert html.index('id="deployment-1-REL-001"') < html.index('id="deployment-1-OBS-007"') < html.index(
        'id="deployment-1-COST-002"')
    assert "Capacity &amp; cost" not in html  # no capacity model, no section
    ready_html = render([ready], "html")
    assert "Capacity &amp; cost" in ready_html and "460,208" in ready_html and "$313.74" in ready_html
    assert '<div class="verdict ready">READY</div>' in ready_html
    assert '<div class="verdict not-ready">NOT READY</div>' in html


def test_html_capacity_tolerates_missing_and_odd_keys(ready):
    for capacity in ({"growth": []}, {"growth": [{"multiplier": "x"}]}, {"notes": ["kv cache estimate only"]},
                     {"kv_tokens_per_replica": None, "growth": [{"multiplier": 2, "cost_per_hour": 1.5}]}):
        ready.capacity = capacity
        assert "Capacity &amp; cost" in render([ready], "html")


def test_html_fleet_summary_on_top(ready, not_ready):
    html = render([ready, not_ready], "html")
    assert html.index("Fleet summary") < html.index('id="deployment-1"') < html.index('id="deployment-2"')
    assert 'href="#deployment-2"' in html
    assert "1 of 2 deployments ready" in html


# ----------------------------------------------------------------------------------------------- table, markdown
def test_table_text(ready, not_ready):
    text = render([not_ready], "table")
    assert "\x1b[" not in text
    assert "NOT READY" in text and f"score {not_ready.score}/100" in text
    for dim in DIMENSIONS.values():
        assert dim in text
    # Open findings sorted by severity: the critical ones before the high one.
    assert text.index("REL-001") < text.index("REL-004") and text.index("SEC-003") < text.index("REL-004")
    assert "Enable reliability.liveness.progress_watchdog." in text
    assert "Waived (1): COST-002" in text
    assert "COR-001" not in text  # passes are not listed
    several = render([ready, not_ready], "table")
    assert "1 of 2 deployments ready" in several
    assert several.index("deployments ready") < several.index("Open findings")


def test_print_table_in_colour_and_without_markup_injection(not_ready):
    from rich.console import Console

    not_ready.findings[0].message = "[bold red]not markup[/] " + EVIL
    buf = io.StringIO()
    print_table([not_ready], Console(file=buf, force_terminal=True, width=140, color_system="truecolor"))
    out = buf.getvalue()
    assert "\x1b[" in out
    assert "[bold red]not markup[/]" in re.sub(r"\x1b\[[0-9;]*m", "", out)


def _md_tables(md: str) -> list[list[list[str]]]:
    """GitHub-flavoured tables: header row, delimiter row, body rows (cells split on unescaped pipes)."""
    tables, current = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            current = current if current is not None else []
            current.append(cells)
        elif current is not None:
            tables.append(current)
            current = None
    if current is not None:
        tables.append(current)
    return tables


def test_markdown_tables(ready, not_ready):
    md = render([ready, not_ready], "markdown")
    tables = _md_tables(md)
    assert tables, md
    for t in tables:
        assert len(t) >= 3 and all(re.fullmatch(r":?-+:?", c) for c in t[1]), t[:2]
        assert len({len(row) for row in t}) == 1, t  # an escaped pipe never adds a column
    summary = tables[0]
    assert summary[0] == ["File", "Deployment", "Verdict", "Score", "Failing dimensions"]
    assert len(summary) == 4
    dims = next(t for t in tables if t[0][0] == "Dimension")
    assert len(dims) == 2 + len(DIMENSIONS)
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "\\|" in md
    open_rows = [t for t in tables if t[0][0] == "Check" and "Severity" in t[0]][-1]  # not_ready's
    assert [r[0] for r in open_rows[2:5]] == ["REL-001", "SEC-003", "REL-004"]


# ------------------------------------------------------------------------------------------------- real assessment
def test_real_example_renders_in_every_format():
    import datetime as dt

    from forge.readiness.assess import assess_file

    a = assess_file(ROOT / "readiness" / "examples" / "internal-8b-l40s.yaml", dt.date(2026, 11, 23))
    for fmt in FORMATS:
        out = render([a], fmt, base_dir=ROOT)
        assert a.deployment in out
    log = json.loads(render([a], "sarif", base_dir=ROOT))
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in log["runs"][0]["results"]}
    assert uris == {"readiness/examples/internal-8b-l40s.yaml"}
    assert len(log["runs"][0]["results"]) == len([f for f in a.findings if f.status in ("fail", "warn", "waived")])
    html = render([a], "html")
    if a.capacity:
        assert "Capacity &amp; cost" in html



# ------------------------------------------------------------------------------------- evidence in the reports
def _with_evidence(a: Assessment, ttft_p95: float, chaos: list[dict] | None = None) -> Assessment:
    """An assessment carrying the evidence block assess_loaded builds, from records shaped as the readers return."""
    from types import SimpleNamespace

    from forge.readiness.result import evidence_summary

    load = {"source": "forge", "path": "results.jsonl", "shape": {"requests": 40}, "outcomes": {"ok": 39, "failed": 1},
            "percentiles_s": {"ttft": {"p50": 0.2, "p95": ttft_p95, "p99": 0.9}, "itl": {"p50": 0.01, "p95": 0.03,
                                                                                      "p99": 0.05}}}
    slo = SimpleNamespace(ttft_p95_seconds=0.5, itl_p95_seconds=0.045, e2e_p95_seconds=None)
    a.evidence = evidence_summary(([load], []), slo, (chaos or [], []))
    return a


def test_json_evidence_key_only_with_evidence(ready):
    assert "evidence" not in json.loads(render([ready], "json"))
    data = json.loads(render([_with_evidence(ready, 0.61)], "json"))
    assert data["evidence"]["slo"] == {"ttft_p95_seconds": 0.5, "itl_p95_seconds": 0.045, "e2e_p95_seconds": None}
    assert data["evidence"]["load"][0]["percentiles_s"]["ttft"] == {"p50": 0.2, "p95": 0.61, "p99": 0.9}
    assert data["evidence"]["load"][0]["percentiles_s"]["e2e"] == {"p50": None, "p95": None, "p99": None}


def test_html_latency_chart_marks_the_missed_slo_red(ready):
    missed = render([_with_evidence(ready, 0.61)], "html")
    chart = missed.split('class="latency-chart"', 1)[1].split("</svg>", 1)[0]
    assert 'class="slo"' in chart and "SLO p95 500 ms" in chart and "p95 610 ms &gt; SLO 500 ms" in chart
    assert 'class="lat-p95 lat-over"' in chart and 'class="lat-p50 lat-in"' in chart
    assert "ITL" in chart and "p95 30 ms ≤ SLO 45 ms" in chart  # ITL met
    met = render([_with_evidence(ready_assessment(), 0.31)], "html")
    chart = met.split('class="latency-chart"', 1)[1].split("</svg>", 1)[0]
    assert 'class="lat-p95 lat-in"' in chart and "p95 310 ms ≤ SLO 500 ms" in chart


def test_html_chaos_chart_draws_budgets_and_overruns(ready):
    journals = [{"path": "hang.json", "kind": "engine-hang", "status": "completed", "deviated": False,
                 "measurements": {"detection_seconds": 41.0, "recovery_seconds": 12.0}},
                {"path": "canary.json", "kind": "bad-canary", "status": "failed", "deviated": True,
                 "measurements": {"rollback_seconds": 95.0}}]
    a = _with_evidence(ready, 0.3, journals)
    assert [c["budgets_seconds"] for c in a.evidence["chaos"]] == [
        {"detection_seconds": [30.0], "rollback_seconds": [300.0, 60.0]}] * 2
    chart = render([a], "html").split('class="chaos-chart"', 1)[1].split("</svg>", 1)[0]
    assert "engine-hang" in chart and "bad-canary" in chart and "failed · deviated" in chart
    assert "hang detection 41.0 s, over 30 s" in chart  # the aria text and the tooltip
    assert "rollback 95.0 s, within 5 min; over 60 s" in chart
    assert chart.count('class="budget"') == 3 and 'class="ch-over"' in chart and 'class="ch-near"' in chart


def test_html_without_evidence_says_so(not_ready):
    html = render([not_ready], "html")
    assert "Measured evidence" in html and "every finding below is graded from what deploy.yaml declares" in html
    assert "latency-chart" not in html and "chaos-chart" not in html


def test_html_marks_each_finding_measured_or_claimed(not_ready):
    not_ready.findings[0].basis = "evidence"
    html = render([not_ready], "html")
    article = html.split('id="deployment-1-REL-004"', 1)[1].split("</article>", 1)[0]
    assert 'aria-label="basis: measured evidence"' in article
    other = html.split('id="deployment-1-REL-001"', 1)[1].split("</article>", 1)[0]
    assert 'aria-label="basis: claim declared in deploy.yaml"' in other


def test_real_assessment_carries_load_evidence(tmp_path):
    import datetime as dt

    import yaml

    from forge.readiness.assess import assess_file

    fixtures = ROOT / "tests" / "fixtures" / "load"
    deploy = yaml.safe_load((fixtures / "deploy_slo.yaml").read_text())
    deploy["evidence"] = {"load_results": [str(fixtures / "handmade_results.jsonl")]}
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(deploy))
    a = assess_file(path, dt.date(2026, 11, 23))
    perf010 = next(f for f in a.findings if f.check == "PERF-010")
    assert a.evidence["slo"]["ttft_p95_seconds"] == 0.5
    # The chart shows the figures the check graded.
    assert a.evidence["load"][0]["percentiles_s"]["ttft"]["p95"] == pytest.approx(perf010.evidence[
        "forge:ttft_p95_seconds"], abs=1e-3)
    assert "latency-chart" in render([a], "html")
