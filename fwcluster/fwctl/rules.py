"""fwctl rules: check, diff, apply (and render) the nftables ruleset.

  fwctl rules check   render the template and let the kernel validate it (nft -c)
  fwctl rules diff    running ruleset vs the rendered one (exit 1 on drift)
  fwctl rules apply   replace the running ruleset atomically
  fwctl rules render  print the rendered text

Every subcommand takes --template PATH (try a template before installing it)
and --json. A template or nft error is reported on one line naming the
template line; exit 1, and the running ruleset is untouched.
"""
from __future__ import annotations

import sys

from fwcluster import nft
from fwcluster.args import load_from_args
from fwcluster.fwctl import EXIT_OK, EXIT_PROBLEM, emit


def register(subparsers) -> None:
    p = subparsers.add_parser("rules", help="check, diff and apply the nftables ruleset")
    sub = p.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    for name, func, text in (
            ("check", _check, "render the template and validate it in the kernel (nft -c)"),
            ("diff", _diff, "show how the running ruleset differs from the rendered one"),
            ("apply", _apply, "replace the running ruleset atomically with the rendered one"),
            ("render", _render, "print the rendered ruleset")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--template", metavar="PATH",
                        help="template to use instead of [firewall] template")
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=func)


def _rendered(args):
    cfg, node, _ = load_from_args(args)
    return cfg, nft.render(cfg, node, args.template)


def _failed(args, err: nft.RulesetError) -> int:
    def human(d):
        print(f"error: {d['error']}", file=sys.stderr)
    emit(args, {"ok": False, **err.as_dict()}, human)
    return EXIT_PROBLEM


def _check(args) -> int:
    try:
        _, r = _rendered(args)
        nft.check(r)
    except nft.RulesetError as e:
        return _failed(args, e)
    emit(args, {"ok": True, "template": r.template, "lines": r.text.count("\n")},
         lambda d: print(f"{d['template']}: ok ({d['lines']} lines)"))
    return EXIT_OK


def _diff(args) -> int:
    try:
        _, r = _rendered(args)
        nft.check(r)
        text = nft.diff(r)
    except nft.RulesetError as e:
        return _failed(args, e)
    emit(args, {"ok": True, "template": r.template, "changed": bool(text), "diff": text},
         lambda d: sys.stdout.write(d["diff"] or "running ruleset matches the template\n"))
    return EXIT_PROBLEM if text else EXIT_OK


def _apply(args) -> int:
    try:
        cfg, r = _rendered(args)
        carried = nft.apply(r, run_dir=cfg.run_dir)
    except nft.RulesetError as e:
        return _failed(args, e)
    data = {"ok": True, "applied": True, "template": r.template,
            "owned_buckets": sorted(carried)}
    emit(args, data, lambda d: print(f"applied {d['template']}"))
    return EXIT_OK


def _render(args) -> int:
    try:
        _, r = _rendered(args)
    except nft.RulesetError as e:
        return _failed(args, e)
    emit(args, {"ok": True, "template": r.template, "text": r.text},
         lambda d: sys.stdout.write(d["text"]))
    return EXIT_OK
