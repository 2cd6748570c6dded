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

from fwcluster import ctlsock
from fwcluster.args import add_common_args

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

# Subcommand modules, in the order `fwctl --help` lists them. Every one must
# import: a missing or broken module is a packaging mistake and fails loudly.
COMMANDS = ["status", "maintenance", "sync", "rules", "config", "drill",
            "upgrade", "conntrack", "secret", "dhcp", "completion"]


def emit(args, data, human) -> None:
    """Print data as JSON with --json, else call human(data) to print text."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        human(data)


class DaemonError(ctlsock.ControlError):
    """ask() failed; `code` is fwctl's exit status for it. main() prints the
    message as one `error:` line, so a command need not catch these."""
    code = EXIT_UNREACHABLE


class Unreachable(DaemonError):
    """The daemon is not running, or did not answer sensibly."""
    code = EXIT_UNREACHABLE


class Refused(DaemonError):
    """The daemon answered and said no; `reply` is what it said."""

    def __init__(self, message: str, reply: dict, code: int = EXIT_PROBLEM):
        super().__init__(message)
        self.reply, self.code = reply, code


def ask(cfg, daemon: str, msg: dict, timeout: float = 5.0, refused: int = EXIT_PROBLEM) -> dict:
    """One request to a local daemon ("carpd" or "syncd"); the reply without
    "ok". Raises Unreachable, or Refused (exit status `refused`) when the
    daemon says no; both are ctlsock.ControlError."""
    try:
        reply = ctlsock.request(ctlsock.socket_path(cfg.run_dir, daemon), msg, timeout)
    except (ctlsock.ControlError, ValueError) as e:  # ValueError: not JSON
        raise Unreachable(f"{daemon} is not running or not answering: {e}") from None
    if not isinstance(reply, dict):
        raise Unreachable(f"{daemon}: unexpected reply {reply!r:.80}")
    if not reply.get("ok"):
        raise Refused(f"{daemon}: {reply.get('error') or 'request failed'}", reply, refused)
    return {k: v for k, v in reply.items() if k != "ok"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fwctl", description="See and steer the fwcluster firewall cluster.",
        epilog="exit status: 0 ok, 1 problem found, 2 usage/config error, 3 daemon unreachable")
    add_common_args(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"fwcluster.fwctl.{name}").register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DaemonError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
