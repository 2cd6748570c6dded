"""Helpers the benchmarks share: the command line, statistics, bounded
trial loops, and output as JSON plus a plain/markdown table."""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parent.parent


def arg_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The parser of `python -m bench.NAME`, described by the first line of
    its docstring, with --doc: the markdown file its table goes to."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc.split("\n")[0])
    parser.add_argument("--doc", default=str(REPO / "docs" / "perf" / f"{name}.md"),
                        help="markdown file for the table ('' = do not write)")
    return parser


def have_root() -> bool:
    """True when running as root; else says on stderr why the benchmark
    cannot run (its lab needs network namespaces)."""
    if os.geteuid() == 0:
        return True
    print("error: the benchmark needs root (network namespaces)", file=sys.stderr)
    return False


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far: the sum over its threads of the
    nanoseconds on a CPU (/proc/PID/task/TID/schedstat, first field).
    /proc/PID/stat counts 10 ms ticks, too coarse for a daemon that uses a
    few ms per second; a multithreaded daemon (conntrackd) counts whole."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):   # the thread ended meanwhile
            continue
    return total / 1e9


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sample: always one
    of the measured values, never an interpolation between two."""
    if not values:
        raise ValueError("percentile of an empty sample")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict:
    """count, median, p95, min, max, mean of a sample (None fields if empty)."""
    if not values:
        return {"count": 0, "median": None, "p95": None, "min": None, "max": None, "mean": None}
    return {"count": len(values), "median": statistics.median(values),
            "p95": percentile(values, 95), "min": min(values), "max": max(values),
            "mean": statistics.fmean(values)}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b in (None, 0):
        return None
    return a / b


def run_trials(trial: Callable[[int], float | None], trials: int, max_failures: int | None = None,
               time_limit: float = 600.0, log=sys.stderr) -> tuple[list[float], list[str]]:
    """Call trial(i) until `trials` values are measured. A trial returns a
    value, or raises/returns None when it failed (counted, retried). Bounded:
    stops after max_failures failures (default: trials) or time_limit seconds."""
    values: list[float] = []
    failures: list[str] = []
    max_failures = trials if max_failures is None else max_failures
    deadline = time.monotonic() + time_limit
    i = 0
    while len(values) < trials and len(failures) <= max_failures and time.monotonic() < deadline:
        i += 1
        try:
            v = trial(i)
        except Exception as e:  # a failed trial is data, not a crash of the run
            v = None
            failures.append(f"trial {i}: {type(e).__name__}: {e}")
        else:
            if v is None:
                failures.append(f"trial {i}: no measurement")
        if v is not None:
            values.append(v)
        print(f"  trial {i}: {'%.1f ms' % (v * 1000) if v is not None else 'FAILED ' + failures[-1]}",
              file=log, flush=True)
    return values, failures


def fmt_ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def environment() -> dict:
    """Where a figure was measured, for the record next to it."""
    def version(argv):
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (cp.stdout or cp.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None
    try:
        cpus = len([l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("processor")])
    except OSError:
        cpus = None
    return {"kernel": platform.release(), "python": platform.python_version(), "cpus": cpus,
            "ucarp": version(["ucarp", "--help"]), "keepalived": version(["keepalived", "--version"]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def emit_json(data: dict, stream=sys.stdout) -> None:
    json.dump(data, stream, indent=2, sort_keys=True, default=str)
    stream.write("\n")
    stream.flush()


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: begin -->\n", f"<!-- {name}: end -->\n"


def section(text: str, name: str) -> str:
    """Section `name` of a page's text, markers included ("" if none)."""
    begin, end = markers(name)
    if begin not in text or end not in text:
        return ""
    return begin + text.split(begin, 1)[1].split(end, 1)[0] + end


def write_section(doc: Path, name: str, body: str) -> None:
    """Put body between the markers of section `name` in doc, the rest of
    the page as it was; a page without them gets the section at its end."""
    begin, end = markers(name)
    old = doc.read_text() if doc.exists() else ""
    new = begin + body.rstrip("\n") + "\n" + end
    if section(old, name):
        head, rest = old.split(begin, 1)
        text = head + new + rest.split(end, 1)[1]
    else:
        text = old.rstrip("\n") + ("\n\n" if old else "") + new
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


# --- conntrack events, as each member's table shows them ------------------------------
def watch_events(lab, member: str, path: Path, proto: str, dport: int):
    """`conntrack -E` of member's table (NEW and UPDATE of `proto` flows to
    dport) into path, each line stamped with the wall clock (one clock for
    every namespace). SCHED_RR 99, so its own waits for a CPU are not
    measured as lag. Returns the process (the lab stops it at teardown)."""
    return lab.popen(member, ["chrt", "-r", "99", "conntrack", "-E", "-e", "NEW,UPDATE", "-p", proto,
                              "--dport", str(dport), "-o", "timestamp"],
                     stdout=open(path, "wb"), stderr=subprocess.DEVNULL)


def first_seen(path: Path, marker: str, dport: int) -> dict[int, float]:
    """client port -> time of the first event in a watch_events file whose
    line shows `marker` (a state such as ESTABLISHED, or [ASSURED]) for a
    flow to dport."""
    out: dict[int, float] = {}
    for line in path.read_text(errors="replace").splitlines():
        if marker not in line or f"dport={dport} " not in line:
            continue
        try:
            stamp = float(line.split("]", 1)[0].lstrip("["))
            sport = int(line.split("sport=", 1)[1].split()[0])
        except (ValueError, IndexError):
            continue
        out.setdefault(sport, stamp)
    return out


def lags(source: dict[int, float], replica: dict[int, float]) -> list[float]:
    """Per flow seen on both: replica's time - source's."""
    return [replica[port] - t for port, t in source.items() if port in replica]
