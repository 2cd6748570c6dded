"""fwctl conntrack show|count [filters]: the member's conntrack table, as
syncd sees it (fwctl asks syncd; it does not read the kernel itself)."""
from __future__ import annotations

from fwcluster.args import load_from_args
from fwcluster.fwctl import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, Refused, ask, emit

FILTERS = ("proto", "family", "src", "dst", "sport", "dport", "state")
TIMEOUT = 120.0      # seconds for syncd's answer (a table of ~2M entries)


def register(sub) -> None:
    p = sub.add_parser("conntrack", help="show or count conntrack entries (via syncd)")
    p.add_argument("action", choices=["show", "count"])
    p.add_argument("--proto", help="tcp, udp, icmp, icmpv6 or a number")
    p.add_argument("--family", type=int, choices=[4, 6])
    p.add_argument("--src", help="address or prefix, original source (or NATed reply destination)")
    p.add_argument("--dst", help="address or prefix, original destination")
    p.add_argument("--sport", type=int)
    p.add_argument("--dport", type=int)
    p.add_argument("--state", help="TCP state, e.g. ESTABLISHED")
    p.add_argument("--limit", type=int, default=1000, help="entries shown (default 1000, at most 10000)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg, _node, _ = load_from_args(args)
    flt = {k: getattr(args, k) for k in FILTERS if getattr(args, k) is not None}
    req = {"cmd": "conntrack", "filter": flt, "entries": args.action == "show", "limit": args.limit}
    # What syncd refuses is a bad filter (--src not an address...), a usage
    # error, unless it says to retry (busy with other requests, a failed
    # dump). It reads the table as routine work, a quarter of a core: about
    # 4 s per 100k entries.
    try:
        data = ask(cfg, "syncd", req, timeout=TIMEOUT, refused=EXIT_USAGE)
    except Refused as e:
        if e.reply.get("retry"):
            e.code = EXIT_PROBLEM
        raise
    emit(args, data, human)
    return EXIT_OK


def _tuple(t: dict) -> str:
    return f"{t['src']}:{t['sport']} -> {t['dst']}:{t['dport']}"


def human(d: dict) -> None:
    for e in d.get("entries", []):
        state = e.get("tcp", {}).get("state", "")
        nat = " snat" if e["snat"] else ""
        nat += " dnat" if e["dnat"] else ""
        print(f"{e['proto']:<6} {state:<11} {e['timeout']:>7}s  {_tuple(e['orig'])}  "
              f"reply {_tuple(e['reply'])}{nat}" + (f" mark={e['mark']}" if e["mark"] else ""))
    print(f"{d['count']} of {d['total']} entries")
