"""JUnit XML: one <testsuite> per deploy file, one <testcase> per check, so CI test views show readiness."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from forge.readiness.reports._common import dimension_name, evidence_text, location, waiver_text
from forge.readiness.result import Assessment, Finding

# XML 1.0 can't carry most control characters even escaped; a terminal escape in a message must not break CI.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def clean(text: object) -> str:
    return _NOT_XML.sub("\ufffd", str(text))


def _body(a: Assessment, f: Finding) -> str:
    lines = [f"{f.title}", f"{f.message}", "", f"dimension: {dimension_name(f.dimension)}",
             f"severity: {f.severity}", f"location: {location(a, f)}"]
    if f.evidence:
        lines += ["", "evidence:"] + [f"  {k}: {evidence_text(v)}" for k, v in f.evidence.items()]
    lines += ["", f"fix: {f.remediation}"]
    return clean("\n".join(lines))


def junit_tree(assessments: list[Assessment], *, fail_on: str = "fail") -> ET.Element:
    root = ET.Element("testsuites", name="forge readiness")
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    for a in assessments:
        suite = ET.SubElement(root, "testsuite", name=clean(a.file))
        ET.SubElement(suite, "properties")
        props = suite[0]
        for k, v in (("deployment", a.deployment), ("verdict", a.verdict), ("score", a.score),
                     ("as_of", a.as_of), ("forge_version", a.forge_version)):
            ET.SubElement(props, "property", name=k, value=clean(v))
        counts = {"tests": 0, "failures": 0, "skipped": 0}
        for f in sorted(a.findings, key=lambda f: f.check):
            case = ET.SubElement(suite, "testcase", classname=f"forge.{clean(f.dimension)}",
                                 name=clean(f"{f.check} {f.title}"), file=clean(a.file), line=str(f.line))
            counts["tests"] += 1
            if f.status == "fail" or (f.status == "warn" and fail_on == "warn"):
                el = ET.SubElement(case, "failure", type=clean(f.severity), message=clean(f.message))
                el.text = _body(a, f)
                counts["failures"] += 1
            elif f.status == "warn":
                out = ET.SubElement(case, "system-out")
                out.text = clean(f"WARNING ({f.severity}): ") + _body(a, f)
            elif f.status == "waived":
                ET.SubElement(case, "skipped", message=clean(f"waived: {waiver_text(f)}"))
                counts["skipped"] += 1
            elif f.status == "not_applicable":
                ET.SubElement(case, "skipped", message=clean(f"not applicable: {f.message}"))
                counts["skipped"] += 1
        suite.set("tests", str(counts["tests"]))
        suite.set("failures", str(counts["failures"]))
        suite.set("errors", "0")
        suite.set("skipped", str(counts["skipped"]))
        suite.set("timestamp", clean(f"{a.as_of}T00:00:00" if len(a.as_of) == 10 else a.as_of))
        for k in totals:
            totals[k] += counts[k]
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("errors", "0")
    return root


def junit(assessments: list[Assessment], *, fail_on: str = "fail") -> str:
    root = junit_tree(assessments, fail_on=fail_on)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
