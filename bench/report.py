"""Assemble docs/performance.md from the per-benchmark pages in docs/perf/.

Each benchmark (`make bench-failover`, `bench-sync`, `bench-flood`, `bench-idle`,
`bench-balance`, `bench-image`) rewrites its own page; this joins them so operators find every
figure in one place. Run by `make bench` and `make bench-report`.
"""
from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
ORDER = [("failover", "make bench-failover"), ("sync", "make bench-sync"), ("flood", "make bench-flood"),
         ("idle", "make bench-idle"),
         ("balance", "make bench-balance"), ("image", "make bench-image")]

HEADER = """# Performance

<!-- assembled by `python -m bench.report` from docs/perf/*.md; edit those -->

Every figure here was measured by the benchmark named in its section, on the
project's development machine (2 cores, shared), side by side with the
established tools in one run, and is reported as a ratio where a peer exists.
Re-run the benchmark to refresh a section; the raw JSON goes to stdout.
"""


def render() -> str:
    parts = [HEADER]
    for name, cmd in ORDER:
        page = DOCS / "perf" / f"{name}.md"
        if page.exists():
            body = page.read_text().strip()
            # Demote the page's headings by one level under our section.
            body = "\n".join("#" + line if line.startswith("#") else line for line in body.splitlines())
            parts.append(f"\n<!-- {cmd} -->\n{body}\n")
        else:
            parts.append(f"\n## {name}\n\nNot measured yet: run `{cmd}`.\n")
    return "\n".join(parts)


def main() -> None:
    (DOCS / "performance.md").write_text(render())
    print(f"wrote {DOCS / 'performance.md'}")


if __name__ == "__main__":
    main()
