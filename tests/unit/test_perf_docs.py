"""docs/performance.md is the per-benchmark pages assembled (bench/report.py),
and the pages describe the product as it is: current figures, how to
reproduce them, what limits them. The history of how they got there is in
CHANGELOG.md."""
from __future__ import annotations

import re
from pathlib import Path

from bench import report

ROOT = Path(__file__).resolve().parents[2]
# Headings and phrases of a log of work rounds rather than a description.
HISTORY = re.compile(r"(?i)\bissue \d+\b|\b(first|second|third|this|last) round\b|before and after"
                     r"|what changed\b|\bnot done\b")


def test_performance_md_is_assembled_from_the_pages():
    assert (ROOT / "docs" / "performance.md").read_text() == report.render(), \
        "run `python -m bench.report` (make bench-report)"


def test_performance_pages_hold_no_history():
    pages = [ROOT / "docs" / "performance.md", *(ROOT / "docs" / "perf").glob("*.md")]
    found = {str(p.relative_to(ROOT)): HISTORY.findall(p.read_text()) for p in pages}
    assert {k: v for k, v in found.items() if v} == {}
