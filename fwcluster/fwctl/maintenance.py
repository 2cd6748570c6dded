"""fwctl maintenance on|off: demote this member so the peer takes the vips
(on), or lift that demotion (off). carpd persists the setting in
{state_dir}/maintenance, so it survives a carpd restart.
"""
from __future__ import annotations

import sys

from fwcluster import control
from fwcluster.cli import load_from_args
from fwcluster.fwctl import EXIT_OK, EXIT_PROBLEM, EXIT_UNREACHABLE, emit


def register(sub) -> None:
    p = sub.add_parser("maintenance", help="hand the vips to the peer (on) or take part again (off)")
    p.add_argument("state", choices=["on", "off"])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg, _node, _ = load_from_args(args)
    path = control.socket_path(cfg.run_dir, "carpd")
    try:
        reply = control.request(path, {"cmd": "maintenance", "on": args.state == "on"})
    except (control.ControlError, ValueError) as e:
        print(f"error: carpd is not running or not answering: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not reply.get("ok"):
        print(f"error: carpd: {reply.get('error', 'request failed')}", file=sys.stderr)
        return EXIT_PROBLEM
    data = {"maintenance": reply["maintenance"]}
    emit(args, data, lambda d: print(f"maintenance {'on' if d['maintenance'] else 'off'}"))
    return EXIT_OK
