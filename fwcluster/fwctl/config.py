"""fwctl config: check, push, status and diff of the cluster configuration.

  fwctl config check    validate cluster.toml, the secret and the template here
  fwctl config push     send cluster.toml, the template and --file NAMEs to every
                        member over the authenticated sync channel; each member
                        validates, then installs all-or-nothing (exit 1 if any
                        member did not take it)
  fwctl config status   this member's config generation, and who is behind/ahead
  fwctl config diff     drift between this member's files and every peer's
                        (exit 1 when any differ)
"""
from __future__ import annotations

import sys

from fwcluster import configfile, dhcpsvc, nft
from fwcluster.args import load_from_args
from fwcluster.core.bundle import Bundle, diff_bundles
from fwcluster.fwctl import EXIT_OK, EXIT_PROBLEM, Refused, ask, emit


def register(subparsers) -> None:
    p = subparsers.add_parser("config", help="check, push, and compare the cluster configuration")
    sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    for name, func, text in (
            ("check", _check, "validate cluster.toml, the secret and the ruleset template"),
            ("push", _push, "push the configuration to every member (all-or-nothing per member)"),
            ("status", _status, "config generation of this member and its peers"),
            ("diff", _diff, "show drift between this member's files and each peer's")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "push":
            sp.add_argument("--file", action="append", default=[], metavar="NAME",
                            help="also push this file from beside cluster.toml (repeatable)")
        sp.set_defaults(func=func)


def _syncd(args, msg: dict, timeout: float = 60.0) -> tuple[str, dict]:
    """(this member's name, syncd's reply); raises fwctl.DaemonError."""
    cfg, node, _ = load_from_args(args)
    return node, ask(cfg, "syncd", msg, timeout)


# What compatible mode trusts, said by `config check` (docs/carp.md, "Trust models").
COMPATIBLE_WARNING = (
    "[carp] mode is compatible: CARP v2's HMAC leaves advbase, advskew and demote "
    "unauthenticated and does not stop a recorded advert being replayed, so anyone who can "
    "send on a vip segment can take or hold the vips with edited or replayed adverts; use it "
    "only beside a ucarp or OpenBSD member (docs/carp.md, \"Trust models\")")


def _check(args) -> int:
    cfg, node, _ = load_from_args(args, need_secret=True)
    result = {"ok": True, "config": cfg.path, "node": node, "warnings": []}
    if cfg.carp.mode == "compatible":
        result["warnings"].append(COMPATIBLE_WARNING)
    try:
        nft.check(nft.render(cfg, node))
    except nft.RulesetError as e:
        result.update(ok=False, error=str(e))
    if result["ok"] and cfg.dhcp:
        # Kea's own check of what fwcluster renders for it, where installed.
        problems = dhcpsvc.check(cfg, node, configfile.secret(cfg))
        if problems:
            result.update(ok=False, error="; ".join(problems))

    def human(r):
        for w in r["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        print(f"{r['config']}: valid for {node}" if r["ok"] else f"error: {r['error']}")
    emit(args, result, human)
    return EXIT_OK if result["ok"] else EXIT_PROBLEM


def _push(args) -> int:
    try:
        r = {"ok": True, **_syncd(args, {"cmd": "config-push", "files": args.file})[1]}
    except Refused as e:
        r = e.reply  # not every member took it: the per-member results say why

    def human(r):
        if "generation" in r:
            print(f"generation {r['generation']} ({r['digest'][:12]})")
        elif r.get("error"):
            print(f"error: {r['error']}")
        for name, res in sorted(r.get("results", {}).items()):
            if res.get("ok"):
                changed = ", ".join(res.get("changed", [])) or "no change"
                print(f"  {name:<12} ok       {changed}{_spoken(res)}")
            elif res.get("config_protocol"):  # it answered: it refused, nothing changed there
                print(f"  {name:<12} FAILED   {refusal(name, res)}")
            else:
                print(f"  {name:<12} FAILED   {res.get('error')}")
    emit(args, r, human)
    return EXIT_OK if r.get("ok") else EXIT_PROBLEM


def refusal(name: str, res: dict) -> str:
    """A peer's refusal of a push, with the release and config protocol it
    runs (a member of another release may not know what this one wrote)."""
    runs = (res.get("release") or {}).get("version") or "a release that does not report its version"
    return f"{name} runs {runs} (config protocol {res['config_protocol']}): " \
           f"it refused the config: {res.get('error')}"


def _spoken(res: dict) -> str:
    """The config protocol a peer spoke (and its release, if it says)."""
    if not res.get("config_protocol"):
        return ""  # this member itself
    runs = (res.get("release") or {}).get("version") or res.get("version")
    return f"  (config protocol {res['config_protocol']}" + (f", {runs})" if runs else ")")


def _status(args) -> int:
    node, r = _syncd(args, {"cmd": "config-status"})

    def human(r):
        state = "STALE (newer on " + ", ".join(r["newer_on"]) + ")" if r["stale"] else "current"
        print(f"{node}: generation {r['generation']} {r['digest'][:12]}  {state}")
        for name, p in sorted(r["peers"].items()):
            gen = p["generation"] if p["reachable"] else "unreachable"
            print(f"  {name:<12} generation {gen}" + (_spoken(p) if p["reachable"] else "")
                  + (f"  ({p['error']})" if p.get("error") else ""))
        if r.get("last_error"):
            print(f"  last error: {r['last_error']}")
    emit(args, r, human)
    return EXIT_PROBLEM if r.get("stale") or r.get("peers_behind") else EXIT_OK


def _diff(args) -> int:
    node, r = _syncd(args, {"cmd": "config-fetch"})
    local = Bundle.from_json(r["local"])
    out = {"drift": False, "peers": {}}
    for name, reply in sorted(r["peers"].items()):
        if not reply.get("ok"):
            out["peers"][name] = {"error": reply.get("error")}
            out["drift"] = True
            continue
        remote = Bundle.from_json(reply["bundle"])
        text = diff_bundles(local, remote, name)
        out["peers"][name] = {"same": not text, "generation": remote.generation, "diff": text}
        out["drift"] |= bool(text)

    def human(o):
        for name, p in o["peers"].items():
            if "error" in p:
                print(f"{name}: {p['error']}")
            elif p["same"]:
                print(f"{name}: same as {node}")
            else:
                print(p["diff"], end="")
    emit(args, out, human)
    return EXIT_PROBLEM if out["drift"] else EXIT_OK
