"""fwctl maintenance on|off: demote this member so the peer takes the vips
(on), or lift that demotion (off). carpd persists the setting in
{state_dir}/maintenance, so it survives a carpd restart.
"""
from __future__ import annotations

from fwcluster.args import load_from_args
from fwcluster.fwctl import EXIT_OK, ask, emit


def register(sub) -> None:
    p = sub.add_parser("maintenance", help="hand the vips to the peer (on) or take part again (off)")
    p.add_argument("state", choices=["on", "off"])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg, _node, _ = load_from_args(args)
    reply = ask(cfg, "carpd", {"cmd": "maintenance", "on": args.state == "on"})
    data = {"maintenance": reply["maintenance"]}
    emit(args, data, lambda d: print(f"maintenance {'on' if d['maintenance'] else 'off'}"))
    return EXIT_OK
