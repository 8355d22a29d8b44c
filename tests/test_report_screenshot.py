"""The HTML report as a reviewer sees it: rendered by headless Chromium (Debian's `chromium`, mk/browser.mk).

One report is built through the real CLI: reference-stack/deploy.yaml with load results, three drill journals
(written by chaos.journal.Journal, the class `forge chaos run` writes them with) and a baseline. Chromium then
screenshots it (a PNG of the right size that is not blank), dumps its DOM (the verdict, the 8 dimensions, the
latency and chaos charts are there) and logs its network activity (nothing but the file itself is loaded).

Run as a script it writes the README's screenshot: `python tests/test_report_screenshot.py docs/img/report.png`
(`make screenshot`), with out/load-results.jsonl of `make demo` as load evidence when it is there.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AS_OF = "2026-11-23"
WIDTH, HEIGHT = 1280, 2400
FIXTURE_LOAD = ROOT / "tests" / "fixtures" / "load" / "handmade_results.jsonl"
DEMO_LOAD = ROOT / "out" / "load-results.jsonl"  # make demo's


def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed — run `make browser` (Debian package `chromium`)")
    return binary


def run_chromium(*args: str, profile: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    # No sandbox: CI containers run as root, where Chromium's sandbox refuses to start. Everything that would
    # phone home (component updates, sync, background networking) is off; --user-data-dir keeps runs apart.
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
           "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------------ the report
def write_journals(where: Path) -> list[Path]:
    """Three game days as `forge chaos run` records them: a hang caught in 12 s, a bad canary rolled back in 95 s,
    and a spot drill whose steady state did not come back."""
    from forge.chaos.journal import Journal

    drills = [("engine-hang", "completed", False, {"detection_seconds": 12.4, "recovery_seconds": 41.0}),
              ("bad-canary", "completed", False, {"rollback_seconds": 95.0, "promoted": False}),
              ("spot-interruption", "failed", True, {"drain_seconds": 48.0, "lost_requests_with_drain": 2})]
    paths = []
    for kind, status, deviated, measured in drills:
        journal = Journal(experiment={"title": f"{kind} game day", "tags": ["forge", kind]})
        journal.measurements.update(measured)
        journal.deviated = deviated
        journal.finish(status)
        paths.append(where / f"{kind}.journal.json")
        journal.write(paths[-1])
    return paths


def forge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forge.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def _arg(path: Path) -> str:
    """A path as the CLI is given it: relative to the repository when under it, so the report names it so."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def build_report(where: Path, load_results: Path = FIXTURE_LOAD, hang_journal: Path | None = None) -> Path:
    """report.html of the reference deployment with load, drills and a baseline (the same file without them).
    hang_journal: a real engine-hang journal (make demo's) in place of the sample one."""
    where.mkdir(parents=True, exist_ok=True)
    previous = where / "previous.json"
    r = forge("readiness", "assess", "reference-stack/deploy.yaml", "--format", "json", "--output", _arg(previous),
              "--as-of", "2026-11-02")
    assert r.returncode in (0, 1), r.stderr
    drills = write_journals(where)
    if hang_journal is not None:
        drills = [hang_journal] + [p for p in drills if not p.name.startswith("engine-hang")]
    journals = [a for p in drills for a in ("--chaos-journal", _arg(p))]
    report = where / "report.html"
    r = forge("readiness", "assess", "reference-stack/deploy.yaml", "--load-results", _arg(load_results), *journals,
              "--baseline", _arg(previous), "--format", "html", "--output", str(report), "--as-of", AS_OF)
    assert r.returncode in (0, 1) and report.is_file(), r.stderr
    return report


# ----------------------------------------------------------------------------------------- reading the PNG
def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and the unfiltered rows of an 8-bit RGB/RGBA PNG, with the standard library only."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None, "no IHDR chunk"
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytes(width * bpp)
    low, high = int.from_bytes(b"\x7f" * stride, "big"), int.from_bytes(b"\x80" * stride, "big")
    for y in range(height):
        f, line = raw[y * (stride + 1)], raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)]
        if f == 2:  # Up, most of Chromium's rows: byte-wise add without carries, on whole rows as integers
            a, b = int.from_bytes(line, "big"), int.from_bytes(prev, "big")
            line = (((a & low) + (b & low)) ^ ((a ^ b) & high)).to_bytes(stride, "big")
        elif f:  # Sub, Average, Paeth (RFC 2083 §6), byte by byte
            out = bytearray(line)
            for i in range(stride):
                a = out[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                if f == 1:
                    out[i] = (out[i] + a) & 255
                elif f == 3:
                    out[i] = (out[i] + (a + b) // 2) & 255
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    out[i] = (out[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            line = bytes(out)
        rows.append(line if bpp == 3 else bytes(v for j, v in enumerate(line) if j % 4 != 3))
        prev = line
    return width, height, rows


# ------------------------------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return build_report(tmp_path_factory.mktemp("report"))


def test_screenshot_is_the_right_size_and_not_blank(report, tmp_path):
    png = tmp_path / "report.png"
    r = run_chromium(f"--screenshot={png}", f"--window-size={WIDTH},{HEIGHT}", report.as_uri(),
                     profile=tmp_path / "profile")
    assert png.is_file(), r.stderr[-2000:]
    width, height, rows = read_png(png)
    assert (width, height) == (WIDTH, HEIGHT)
    # Sampled every 4th pixel of every 8th row: a blank or unstyled page has a handful of colours, the report's
    # verdict, bars, pills and charts give hundreds (anti-aliased text adds more).
    colours = {row[x:x + 3] for row in rows[::8] for x in range(0, width * 3, 12)}
    assert len(colours) > 150, f"only {len(colours)} distinct colours: blank or unstyled page?"
    # The report's own colours are on screen: the NOT READY red (#c62828), the pass green (#2e7d32) of the
    # drills within budget, and the accent blue (#1f5fae) of measured latency within the SLO and of the
    # "measured" marker.
    for rgb in ((0xC6, 0x28, 0x28), (0x2E, 0x7D, 0x32), (0x1F, 0x5F, 0xAE)):
        assert bytes(rgb) in colours, f"#{bytes(rgb).hex()} not on screen"


def test_dom_has_verdict_dimensions_and_evidence_charts(report, tmp_path):
    from forge.readiness.result import DIMENSIONS

    r = run_chromium("--dump-dom", report.as_uri(), profile=tmp_path / "profile")
    dom = r.stdout
    assert "</html>" in dom, r.stderr[-2000:]
    assert '<div class="verdict not-ready">NOT READY</div>' in dom
    for name in DIMENSIONS.values():
        assert name.replace("&", "&amp;") in dom
    latency = dom.split('class="latency-chart"', 1)[1].split("</svg>", 1)[0]
    assert "TTFT" in latency and "ITL" in latency and 'class="slo"' in latency
    assert "lat-over" in latency  # the fixture's p95 TTFT (555 ms) misses the 500 ms SLO: drawn red
    chaos = dom.split('class="chaos-chart"', 1)[1].split("</svg>", 1)[0]
    for kind in ("engine-hang", "bad-canary", "spot-interruption"):
        assert kind in chaos
    assert "hang detection" in chaos and 'class="budget"' in chaos and "5 min" in chaos
    assert "Since the last assessment" in dom and "since 2026-11-02" in dom
    assert "◆ measured" in dom and "◇ claim" in dom


def page_requests(page: Path, tmp_path: Path) -> set[str]:
    """URLs a page asked Chromium to fetch, from Chromium's net log. The browser's own background requests
    (time sync, account checks) carry no initiator ("not an origin") and are not the page's doing; a file://
    page's own requests carry its opaque origin, "null"."""
    log = tmp_path / f"{page.stem}.netlog.json"
    # Nothing resolves (--host-resolver-rules), so a request the page makes is logged but never leaves the host.
    r = run_chromium(f"--log-net-log={log}", "--host-resolver-rules=MAP * ~NOTFOUND", "--dump-dom", page.as_uri(),
                     profile=tmp_path / f"{page.stem}.profile")
    assert "</html>" in r.stdout, r.stderr[-2000:]
    text = log.read_text(encoding="utf-8", errors="replace").rstrip()
    # A net log Chromium did not get to close ends mid-array; the events it holds are still the requests made.
    events = json.loads(text if text.endswith("}") else text.rstrip(",") + "]}")
    start_job = events["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    starts = [e.get("params") or {} for e in events.get("events", []) if e.get("type") == start_job]
    return {p["url"] for p in starts if "url" in p and p.get("initiator") != "not an origin"}


def test_the_page_loads_nothing_from_the_network(report, tmp_path):
    html = report.read_text(encoding="utf-8")
    assert "https://" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert page_requests(report, tmp_path) == set()
    # The same probe sees a page that does fetch something, so the empty set above is a finding, not a blind spot.
    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/probe.png"></body></html>')
    assert page_requests(control, tmp_path) == {"http://127.0.0.1:9/probe.png"}


def test_budgets_drawn_are_the_ones_the_drill_checks_grade():
    """The chart's budget lines come from result.py; the drill checks have their own constants: keep them equal."""
    from forge.readiness.checks import deployment, drills
    from forge.readiness.result import CHAOS_BUDGETS_SECONDS

    assert CHAOS_BUDGETS_SECONDS["detection_seconds"][0] == drills.HANG_DETECTION_BUDGET_SECONDS
    assert CHAOS_BUDGETS_SECONDS["rollback_seconds"][0] == deployment.ROLLBACK_BUDGET_SECONDS


# -------------------------------------------------------------------------------------------- make screenshot
def main(out: Path, load_results: Path | None = None) -> None:
    """docs/img/report.png: the top of the report (verdict, dimensions, baseline, evidence), at laptop width."""
    load_results = load_results or (DEMO_LOAD if DEMO_LOAD.is_file() else FIXTURE_LOAD)
    where = ROOT / "out" / "screenshot"  # under the repository, so the report names its files briefly
    hang = ROOT / "out" / "chaos-engine-hang.json"  # make demo's game day, when it has run
    report = build_report(where, load_results, hang if hang.is_file() else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    r = run_chromium(f"--screenshot={out.resolve()}", "--window-size=1280,1600", report.as_uri(),
                     profile=where / "profile")
    shutil.rmtree(where / "profile", ignore_errors=True)
    if not out.is_file():
        sys.exit(f"chromium wrote no screenshot: {r.stderr[-500:]}")
    print(f"{out}: {out.stat().st_size / 1024:.0f} KiB, load evidence from {load_results}")


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img/report.png"),
         Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else None)
