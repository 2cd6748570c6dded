"""`python -m tests.labkit demo|cleanup` (make demo)."""
from __future__ import annotations

import os
import sys

from tests.labkit import reaper

# Prefixes the tests, benchmarks and demo give their labs.
LAB_PREFIXES = ("fwt", "fwc", "fwdemo", "fwb", "fwbb", "fwbal", "h4bs", "h4pk", "h4s3", "h4sn",
                "h4sy")

def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m tests.labkit",
                                     description="The fwcluster namespace lab.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="two members, a pinging client, a live failover")
    d.add_argument("--limit", type=float, default=60.0, help="give up after this many seconds")
    sub.add_parser("cleanup", help="delete namespaces left by labs whose process died")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("error: the lab needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.cmd == "demo":
        from tests.labkit.demo import demo
        return demo(limit=args.limit)
    for prefix in LAB_PREFIXES:
        for name in reaper.cleanup_stale(prefix):
            print(f"deleted {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
