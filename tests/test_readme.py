"""Figures the README states that code can check."""

import re
from pathlib import Path

from forge.readiness.registry import all_checks

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_check_count_is_the_registry_count():
    stated = re.search(r"(\d+) checks \(`forge readiness checks`", README)
    assert stated, "README no longer states the number of checks"
    assert int(stated.group(1)) == len(all_checks())
