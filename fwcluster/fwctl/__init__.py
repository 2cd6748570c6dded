"""fwctl: the on-box CLI. Each subcommand lives in its own module here and
exposes register(subparsers); the command function gets (args) and returns the
process exit status.

Exit codes (documented in docs/fwctl.md):
  0 success · 1 the command ran and found a problem (degraded, drift, check
  failed) · 2 usage or configuration error · 3 a daemon is not reachable
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from fwcluster import control
from fwcluster.cli import add_common_args

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

# Subcommand modules, in the order `fwctl --help` lists them. A module that
# is not there yet (optional parts) is skipped.
COMMANDS = ["status", "maintenance", "sync", "rules", "config", "drill",
            "upgrade", "conntrack", "completion"]


def emit(args, data, human) -> None:
    """Print data as JSON with --json, else call human(data) to print text."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        human(data)


def ask(cfg, daemon: str, msg: dict, timeout: float = 5.0) -> dict:
    """One request to a local daemon ("carpd" or "syncd"); the reply without
    "ok". Raises control.ControlError when unreachable or when it says no."""
    reply = control.request(control.socket_path(cfg.run_dir, daemon), msg, timeout)
    if not isinstance(reply, dict):
        raise control.ControlError(f"{daemon}: unexpected reply {reply!r:.80}")
    if not reply.get("ok"):
        raise control.ControlError(f"{daemon}: {reply.get('error', 'request failed')}")
    return {k: v for k, v in reply.items() if k != "ok"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fwctl", description="See and steer the fwcluster firewall cluster.",
        epilog="exit status: 0 ok, 1 problem found, 2 usage/config error, 3 daemon unreachable")
    add_common_args(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"fwcluster.fwctl.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"fwcluster.fwctl.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)
