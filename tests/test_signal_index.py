"""The alias index readiness checks read instead of the whole catalog."""

import json

from forge import catalog, signal_index


def test_committed_index_equals_fresh_rendering():
    assert signal_index.INDEX_PATH.read_text(encoding="utf-8") == signal_index.render(), \
        "run: python -m forge.signal_index > forge/data/signal-aliases.json"


def test_index_answers_like_the_catalog():
    assert signal_index.signal_aliases() == catalog.signal_aliases()


def test_stale_index_falls_back_to_the_catalog(tmp_path, monkeypatch):
    stale = json.loads(signal_index.INDEX_PATH.read_text())
    stale["source_crc32"] += 1
    stale["aliases"] = ["only_in_a_stale_index"]
    path = tmp_path / "signal-aliases.json"
    path.write_text(json.dumps(stale))
    monkeypatch.setattr(signal_index, "INDEX_PATH", path)
    assert signal_index.signal_aliases() == catalog.signal_aliases()


def test_unreadable_index_falls_back_to_the_catalog(tmp_path, monkeypatch):
    path = tmp_path / "signal-aliases.json"
    path.write_text("{not json")
    monkeypatch.setattr(signal_index, "INDEX_PATH", path)
    assert "ttft" in signal_index.signal_aliases()
