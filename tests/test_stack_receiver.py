"""The Alertmanager webhook receiver: every notification one JSON line with its receive time (in-process)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from forge.reference_stack.receiver import alert_events, make_server, notifications

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# The shape Alertmanager 0.25 posts (webhook_config, version 4), trimmed to what the receiver reads.
NOTIFICATION = {
    "version": "4", "status": "firing", "receiver": "forge-receiver", "groupKey": "{}:{alertname=\"ForgeEngineDown\"}",
    "alerts": [
        {"status": "firing", "labels": {"alertname": "ForgeEngineDown", "replica": "s1", "severity": "page"},
         "startsAt": "2026-11-23T10:00:00Z"},
        {"status": "resolved", "labels": {"alertname": "ForgeEngineHung", "replica": "s0"},
         "startsAt": "2026-11-23T09:00:00Z"},
    ],
}


@pytest.fixture
def receiver(tmp_path):
    out = tmp_path / "alerts.jsonl"
    server = make_server("127.0.0.1", 0, out)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", out
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _post(url: str, data: bytes) -> int:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with OPENER.open(request, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_each_notification_is_one_json_line_with_its_receive_time(receiver):
    url, out = receiver
    before = time.time()
    assert _post(f"{url}/alerts", json.dumps(NOTIFICATION).encode()) == 200
    assert _post(f"{url}/alerts", json.dumps(dict(NOTIFICATION, status="resolved")).encode()) == 200
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["payload"] == NOTIFICATION and first["path"] == "/alerts"
    assert before <= first["received_unix"] <= time.time() + 0.01
    assert first["received_at"].endswith("+00:00")
    events = alert_events(out)
    assert [(e["alertname"], e["status"], e["labels"]["replica"]) for e in events[:2]] == [
        ("ForgeEngineDown", "firing", "s1"), ("ForgeEngineHung", "resolved", "s0")]
    assert len(notifications(out)) == 2


def test_bad_bodies_are_refused_and_not_recorded(receiver):
    url, out = receiver
    assert _post(f"{url}/alerts", b"not json") == 400
    with OPENER.open(f"{url}/health", timeout=5) as resp:
        assert resp.status == 200
    assert out.read_text() == ""


def test_concurrent_posts_never_interleave(receiver):
    url, out = receiver
    body = json.dumps(NOTIFICATION).encode()
    threads = [threading.Thread(target=_post, args=(f"{url}/alerts", body)) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    records = notifications(out)
    assert len(records) == 20 and all(r["payload"] == NOTIFICATION for r in records)
