"""Command-line plumbing shared by carpd, syncd and fwctl.

Every program takes --config PATH and --node NAME; a bad config is reported on
one line (file: key: reason) and the program exits with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from fwcluster import configfile
from fwcluster.core import config as _config

DEFAULT_CONFIG = "/etc/fwcluster/cluster.toml"
NODE_FILE = "/etc/fwcluster/node"


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH",
                        help=f"cluster config (default {DEFAULT_CONFIG})")
    parser.add_argument("--node", metavar="NAME",
                        help=f"this member's name (default: first line of {NODE_FILE})")
    parser.add_argument("--run-dir", metavar="DIR",
                        help="control socket directory (overrides cluster.run_dir)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="persistent state directory (overrides cluster.state_dir)")


def default_node() -> str | None:
    try:
        return Path(NODE_FILE).read_text().split("\n", 1)[0].strip() or None
    except (OSError, ValueError):  # missing, unreadable or not UTF-8: parse() names it
        return None


def fail(message: str, status: int = _config.EXIT_CONFIG) -> "NoReturn":  # noqa: F821
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


def load_from_args(args: argparse.Namespace, *, need_node: bool = True,
                   need_secret: bool = False) -> tuple[_config.Config, str | None, bytes | None]:
    """(config, node, secret) from parsed args; exits 2 on any config error."""
    node = args.node or default_node()
    if need_node and not node:
        fail(f"{args.config}: --node: not given and {NODE_FILE} is missing")
    try:
        cfg = configfile.load(args.config, node)
        secret = configfile.secret(cfg) if need_secret else None
    except _config.ConfigError as e:
        fail(str(e))
    overrides = {}
    if getattr(args, "run_dir", None):
        overrides["run_dir"] = args.run_dir
    if getattr(args, "state_dir", None):
        overrides["state_dir"] = args.state_dir
    for key, value in overrides.items():
        if not value.startswith("/") or "\0" in value:
            fail(f"--{key.replace('_', '-')}: {value!r} must be an absolute path")
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg, node, secret
