"""The nftables ruleset: render the [firewall] template, check, diff, apply.

The template (jinja2) is rendered with the cluster model (see context()).
fwcluster owns the whole ruleset of the appliance: every apply is
"flush ruleset" plus the rendered text in one nftables transaction, so the
kernel takes all of it or none of it -- a broken rule leaves the running
ruleset as it was.

Templates are data: the loader knows only the files a config bundle can
carry (flat names beside the template, never a member-local one), and when
a pushed bundle is rendered, only that bundle's own bytes -- so what was
checked in the staging directory is what is applied, and no file of the
receiving member can be pulled into the ruleset or into an error sent back
to the pusher. A pushed ruleset may not use nft's own `include` either.

Errors name the template line. jinja2 reports its own; for an nft error the
template is rendered a second time with a marker in front of every source
line, and the marker nearest before the failing column says which template
line produced it.

With [balance] mode = "active-active" the ruleset holds the set of bucket
numbers this member owns (table inet fwcluster, set owned_buckets); carpd
replaces its contents with set_owned_buckets() on every ownership change,
and apply() carries the current contents into a new ruleset.
"""
from __future__ import annotations

import contextlib
import difflib
import fcntl
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import jinja2
import jinja2.sandbox

from fwcluster import configfile
from fwcluster.core import bundle, hashbuckets, virtualmac
from fwcluster.core.config import GROUP_MARK_MASK, GROUP_MARK_SHIFT, NOSYNC_MARK

TABLE = "fwcluster"
OWNED_SET = "owned_buckets"
LOCK_NAME = "nft.lock"
NAT_PORT_LOW = 1024
_MARK = re.compile("\x02(\\d+)\x03")
_MARK_SPLIT = re.compile("(\x02\\d+\x03)")
_NFT_ERROR = re.compile(r"^(?P<file>[^\n]*?):(?P<line>\d+):(?P<col>\d+)(?:-\d+)?: Error: (?P<msg>[^\n]*)",
                        re.M)
# Lines the apply puts in front of the rendered text.
_PREFIX = "flush ruleset\n"
MAX_TEMPLATE = 1 << 20  # bytes of one template file
# nft's include statement, at the start of a line or after a ";".
_NFT_INCLUDE = re.compile(r"(?:^|;)\s*include\b", re.M)


class RulesetError(Exception):
    """A template or nft problem, as one line naming the template line."""

    def __init__(self, message: str, *, template: str = "", line: int | None = None,
                 rendered_line: int | None = None):
        self.template = template
        self.line = line
        self.rendered_line = rendered_line
        where = f"{template}:{line}: " if template and line else (f"{template}: " if template else "")
        self.message = message
        super().__init__(where + message)

    def as_dict(self) -> dict:
        return {"error": str(self), "template": self.template, "line": self.line,
                "rendered_line": self.rendered_line}


# --- template context -------------------------------------------------------------

# Conntrack event bits (enum ip_conntrack_events, IPCT_NEW .. IPCT_LABEL):
# a flow's mask once it is replicated, and before (only the event that
# makes it assured).
CT_EVENTS_ALL = "0x7ff"
CT_EVENTS_UNTIL_ASSURED = "assured"


def sync_events(f) -> dict:
    """The ct event masks of [sync] filter (the template's `sync_events`
    chain) and the rule fragment of a flow that is never replicated
    (`sync.nosync`, pf's no-sync: the mark syncd skips, and no events)."""
    mark = f"0x{NOSYNC_MARK:08x}"
    return {"events_new": CT_EVENTS_UNTIL_ASSURED if f.states == "sessions" else None,
            "events_all": CT_EVENTS_ALL, "nosync_mark": mark,
            "nosync": f"ct mark set ct mark or {mark} ct event set 0x0"}


def sync_links(cfg, node: str) -> list[dict]:
    out = []
    for i, name in enumerate(cfg.sync.interfaces):
        addrs = [m.link_addresses[i] for m in cfg.peers(node)]
        out.append({"interface": name, "peers4": [str(a) for a in addrs if a.version == 4],
                    "peers6": [str(a) for a in addrs if a.version == 6]})
    return out


def context(cfg, node: str) -> dict:
    """What a template sees. Addresses are strings, ready to print."""
    def member(m):
        return {"name": m.name, "sync_address": str(m.sync_address),
                "family": m.sync_address.version, "advskew": m.advskew}

    active = cfg.balance.mode == "active-active"
    vips = []
    vmacs: dict[str, list[str]] = {}  # interface -> its vips' virtual-MAC macvlans
    for v in cfg.vips:
        vmac = virtualmac.ifname(v.vhid) if v.mac == virtualmac.VIRTUAL else None
        if vmac:
            vmacs.setdefault(v.interface, []).append(vmac)
        vips.append({
            "vhid": v.vhid, "interface": v.interface, "family": v.family,
            "address": str(v.address), "ip": str(v.address.ip),
            "prefixlen": v.address.network.prefixlen, "network": str(v.address.network),
            "mac": hashbuckets.vip_mac(v.vhid) if active else None,
            # raw forms for payload matches (@th,...): the address and the MAC
            "ip_hex": "0x" + v.address.ip.packed.hex(),
            "mac_hex": "0x" + hashbuckets.vip_mac(v.vhid).replace(":", "") if active else None,
            "vmac": vmac,
            "vmac_address": virtualmac.mac(v.vhid, v.family) if vmac else None,
            # several failover groups: the ct mark of the vip's group's flows
            # (0 for the first group: nothing to set)
            "group": v.group,
            "group_mark": (f"0x{cfg.group_index(v.group) << GROUP_MARK_SHIFT:08x}"
                           if len(cfg.groups) > 1 and cfg.group_index(v.group) else None),
        })
    peers = [member(m) for m in cfg.peers(node)]
    # Active-active members NAT to the same vip independently: each takes
    # its own slice of source ports so two members never pick one tuple.
    nat_ports = None
    if active:
        size = (65536 - NAT_PORT_LOW) // len(cfg.members)
        low = NAT_PORT_LOW + cfg.wire_index(node) * size  # by name: table order may differ
        nat_ports = f"{low}-{low + size - 1}"
    listen_host, _, listen_port = cfg.metrics.listen.rpartition(":")
    listen_host = listen_host.strip("[]")
    return {
        "cluster": {"name": cfg.name},
        "node": node,
        "me": member(cfg.member(node)),
        "members": [member(m) for m in cfg.members],
        "peers": peers,
        "vips": vips,
        "interfaces": list(cfg.interfaces),
        "vmacs": vmacs,
        "groups": {"active": len(cfg.groups) > 1, "names": [g.name for g in cfg.groups],
                   "mask": f"0x{GROUP_MARK_MASK:08x}",
                   "keep": f"0x{0xFFFFFFFF & ~GROUP_MARK_MASK:08x}"},
        "carp": {"interfaces": list(cfg.interfaces), "proto": 112},
        "sync": {"interface": cfg.sync.interface, "interfaces": list(cfg.sync.interfaces),
                 "port": cfg.sync.port,
                 "peers4": [p["sync_address"] for p in peers if p["family"] == 4],
                 "peers6": [p["sync_address"] for p in peers if p["family"] == 6],
                 # per sync link: the peers' addresses on it (sync traffic is
                 # taken on each link from those only)
                 "links": sync_links(cfg, node),
                 **sync_events(cfg.sync.filter)},
        "balance": {"mode": cfg.balance.mode, "active": active,
                    "buckets": cfg.balance.buckets if active else 0,
                    "seed": f"0x{hashbuckets.HASH_SEED:08x}",
                    "table": TABLE, "set": OWNED_SET},
        "nat": {"ports": nat_ports},
        # Conntrack helpers ([firewall] helpers): nft ct helper objects, one per
        # protocol and port, assigned to new connections to that port.
        "helpers": [{"name": h.name, "type": h.protocol, "l4proto": h.transport, "port": h.port}
                    for h in cfg.firewall.helpers],
        # Kea (docs/dhcp.md): DHCP on these interfaces (DHCPv6 on those with
        # pools6), HA to kea-ctrl-agent on the sync link from the peers only.
        "dhcp": {"interfaces": [d.interface for d in cfg.dhcp],
                 "interfaces6": [d.interface for d in cfg.dhcp if d.pools6],
                 "ha_port": cfg.dhcp_ha.port if cfg.dhcp else None},
        "metrics": {"listen": cfg.metrics.listen,
                    "port": int(listen_port) if cfg.metrics.listen else None,
                    "local_only": listen_host in ("127.0.0.1", "::1", "localhost")},
    }


# --- rendering --------------------------------------------------------------------

@dataclass(frozen=True)
class Rendered:
    text: str
    template: str
    context: dict
    loader: "_Loader | None" = None  # what rendered it (the same files map the error back)

    def template_line(self, rendered_line: int, column: int = 1) -> int | None:
        """Template line that produced `column` of a rendered line (1-based)."""
        return _template_line(self, rendered_line, column)


def nft_set(items) -> str:
    """Filter: a list as an nft anonymous set, e.g. { 192.0.2.1, 192.0.2.2 }."""
    items = list(items)
    if not items:
        raise ValueError("nft_set: empty list (an empty anonymous set is not valid nft)")
    return "{ " + ", ".join(str(i) for i in items) + " }"


def nft_names(items) -> str:
    """Filter: names (interfaces) as a quoted nft set, e.g. { "lan0", "wan0" }."""
    return nft_set(json.dumps(str(i)) for i in items)


def nft_ifnames(items) -> str:
    """Filter: one name quoted ("lan0"), more as a set (nft_names)."""
    items = list(items)
    return json.dumps(str(items[0])) if len(items) == 1 else nft_names(items)


class _Loader(jinja2.BaseLoader):
    """The files a bundle can carry and nothing else: flat names, none of them
    member-local or the secret's name ({% include "secret" %} would put the
    passphrase into the ruleset). files: a pushed bundle's own bytes, and
    then only those; else the files beside the template, read as
    configfile reads what the daemons trust (regular, capped, root's)."""

    def __init__(self, directory: str, refuse: frozenset = frozenset(),
                 files: Mapping[str, bytes] | None = None):
        self.directory = directory
        self.refuse = bundle.MEMBER_LOCAL | refuse
        self.files = files

    def get_source(self, environment, template):
        if not bundle.SAFE_NAME.match(template) or template in self.refuse:
            raise jinja2.TemplateNotFound(template)
        if self.files is not None:
            if template not in self.files:
                raise jinja2.TemplateNotFound(template)
            raw = self.files[template]
        else:
            path = os.path.join(self.directory, template)
            try:
                raw, _ = configfile.read_trusted(path, MAX_TEMPLATE)
            except configfile.Untrusted as e:
                if str(e) == "does not exist":
                    raise jinja2.TemplateNotFound(template) from None
                raise OSError(f"{path} {e}") from None
        if len(raw) > MAX_TEMPLATE:
            raise OSError(f"{template} is larger than {MAX_TEMPLATE} bytes")
        # The full name: jinja2 puts it in tracebacks, where _jinja_line finds it.
        return raw.decode("utf-8"), os.path.join(self.directory, template), lambda: False


def _environment(loader: _Loader) -> jinja2.Environment:
    # Sandboxed: a template (which a config push carries) is data, and must
    # not reach Python internals (e.g. ''.__class__.__mro__) to run code.
    env = jinja2.sandbox.SandboxedEnvironment(loader=loader, undefined=jinja2.StrictUndefined,
                                              keep_trailing_newline=True, autoescape=False,
                                              cache_size=0)
    env.filters["nft_set"] = nft_set
    env.filters["nft_names"] = nft_names
    env.filters["nft_ifnames"] = nft_ifnames
    return env


def _jinja_line(exc: BaseException, template: str) -> int | None:
    """jinja2 puts template lines into the traceback; take the innermost one."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == template:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render(cfg, node: str, template: str | None = None,
           files: Mapping[str, bytes] | None = None) -> Rendered:
    """Render the [firewall] template (or `template`) for `node`. files: the
    pushed bundle being checked or applied; the template and whatever it
    includes then come from it alone, and nft's include is refused."""
    path = str(Path(template or cfg.firewall.template).resolve())
    ctx = context(cfg, node)
    loader = _Loader(str(Path(path).parent), frozenset({Path(cfg.secret_file).name}), files)
    try:
        env = _environment(loader)
        tmpl = env.get_template(Path(path).name)
        text = tmpl.render(**ctx)
    except jinja2.TemplateNotFound:
        raise RulesetError("template not found", template=path) from None
    except jinja2.TemplateSyntaxError as e:
        raise RulesetError(f"template syntax error: {e.message}",
                           template=e.filename or path, line=e.lineno) from None
    except (OSError, UnicodeDecodeError) as e:
        raise RulesetError(f"cannot read template: {e}", template=path) from None
    except jinja2.TemplateError as e:
        raise RulesetError(f"template error: {e}", template=path, line=_jinja_line(e, path)) from None
    except Exception as e:  # a filter or test that refused its input
        raise RulesetError(f"template error: {type(e).__name__}: {e}", template=path,
                           line=_jinja_line(e, path)) from None
    if ctx["balance"]["active"] and not re.search(rf"\bset\s+{OWNED_SET}\b", text):
        raise RulesetError(f"buckets.mode is active-active but the rendered ruleset declares no "
                           f"set {OWNED_SET} (in table inet {TABLE}); see docs/firewall.md",
                           template=path)
    if files is not None and _NFT_INCLUDE.search(text):
        # nft would read a file of this member that the bundle does not carry.
        raise RulesetError("a pushed ruleset may not use nft's include (it would read files "
                           "outside the bundle); put the rules in the template", template=path)
    return Rendered(text, path, ctx, loader)


def _mark_source(source: str) -> str:
    """The template with a marker "\\x02N\\x03" in front of the first
    non-blank character of every line N that starts outside a jinja tag and
    does not itself start with a tag (tags print nothing; a marker before a
    "{{-" would stop its whitespace stripping). Markers are not whitespace,
    so whitespace control around them strips exactly what it strips
    without them."""
    out = []
    inside = None  # closing delimiter of the tag the scan is in, if any
    for n, line in enumerate(source.splitlines(keepends=True), start=1):
        body = line.lstrip(" \t")
        if inside is None and body.strip() and not body.startswith(("{%", "{#", "{{-")):
            line = line[:len(line) - len(body)] + f"\x02{n}\x03" + body
        i = 0
        while i < len(line):
            if inside is None:
                j = line.find("{", i)
                if j < 0 or j + 1 >= len(line):
                    break
                inside = {"%": "%}", "#": "#}", "{": "}}"}.get(line[j + 1])
                i = j + 2 if inside else j + 1
            else:
                j = line.find(inside, i)
                if j < 0:
                    break
                i, inside = j + 2, None
        out.append(line)
    return "".join(out)


def _template_line(r: Rendered, rendered_line: int, column: int) -> int | None:
    try:
        loader = r.loader or _Loader(str(Path(r.template).parent))
        env = _environment(loader)
        source, _, _ = loader.get_source(env, Path(r.template).name)
        out = env.from_string(_mark_source(source)).render(**r.context)
    except Exception:
        return None
    if _MARK.sub("", out) != r.text:
        return None  # a marker changed the output (e.g. inside a string): no safe answer
    lines = out.split("\n")
    if not 1 <= rendered_line <= len(lines):
        return None
    # The source line of a character is the last marker before it, which may
    # sit on an earlier output line when a tag swallowed a newline.
    current = None
    for text in lines[:rendered_line - 1]:
        marks = _MARK.findall(text)
        if marks:
            current = int(marks[-1])
    clean_col = 0
    for piece in _MARK_SPLIT.split(lines[rendered_line - 1]):
        m = _MARK.fullmatch(piece)
        if m:
            current = int(m.group(1))
            continue
        clean_col += len(piece)
        if clean_col >= column:
            break
    return current


# --- libnftables ------------------------------------------------------------------

def _nft():
    import nftables  # Debian's python3-nftables; imported late so pure users need not have it
    n = nftables.Nftables()
    n.set_echo_output(False)
    return n


def _run_file(text: str, dry_run: bool) -> tuple[int, str, str, str]:
    """Run nft commands from a temporary file (errors then carry line:col)."""
    n = _nft()
    n.set_dry_run(dry_run)
    with tempfile.NamedTemporaryFile("w", prefix="fwcluster-", suffix=".nft") as f:
        f.write(text)
        f.flush()
        rc, out, err = n.cmd_from_file(f.name)
        return rc, out, err, f.name


def _nft_error(r: Rendered, err: str, offset: int, source: str | None = None) -> RulesetError:
    """The first error nft printed, mapped back to the template line.
    source: the file nft read (an error in a file it includes is reported
    with that file's own name and line)."""
    m = _NFT_ERROR.search(err)
    if not m:
        # Only the first "Error:" line: the lines nft prints under it echo
        # the source, which may be a file the ruleset included.
        first = next((ln for ln in err.splitlines() if "Error:" in ln), "").strip()
        return RulesetError(f"nft: {first or 'failed'}", template=r.template)
    if source is not None and m.group("file") != source:
        return RulesetError(f"nft: {m.group('file')}:{m.group('line')}: {m.group('msg').strip()}",
                            template=r.template)
    rline = int(m.group("line")) - offset
    msg = m.group("msg").strip()
    rendered_lines = r.text.split("\n")
    if not 1 <= rline <= len(rendered_lines):
        # Past the template's text: the lines fwcluster adds (owned set).
        return RulesetError(f"nft: {msg}", template=r.template)
    tline = r.template_line(rline, int(m.group("col")))
    snippet = rendered_lines[rline - 1].strip()
    return RulesetError(f"nft: {msg} (rendered line {rline}: {snippet})",
                        template=r.template, line=tline, rendered_line=rline)


def check(r: Rendered) -> None:
    """`nft -c`: the kernel validates the whole transaction, nothing changes."""
    rc, _, err, source = _run_file(_PREFIX + r.text, dry_run=True)
    if rc != 0:
        raise _nft_error(r, err, _PREFIX.count("\n"), source)


@contextlib.contextmanager
def _locked(run_dir: str | None):
    """Serialise ruleset replacement and owned-set updates on one member."""
    if not run_dir:
        yield
        return
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / LOCK_NAME, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _elements(owned: Iterable[int]) -> str:
    return ", ".join(str(b) for b in sorted(set(owned)))


def apply(r: Rendered, run_dir: str | None = None) -> frozenset[int]:
    """Replace the running ruleset with r in one transaction; return the
    owned buckets carried over into it. On error nothing changed."""
    with _locked(run_dir):
        carried: frozenset[int] = frozenset()
        text = _PREFIX + r.text
        if not text.endswith("\n"):
            text += "\n"
        if r.context["balance"]["active"]:
            carried = frozenset(b for b in (owned_buckets() or ())
                                if b < r.context["balance"]["buckets"])
            if carried:
                text += f"add element inet {TABLE} {OWNED_SET} {{ {_elements(carried)} }}\n"
        rc, _, err, source = _run_file(text, dry_run=False)
        if rc != 0:
            raise _nft_error(r, err, _PREFIX.count("\n"), source)
        return carried


def running(stateless: bool = False) -> str:
    """The running ruleset as `nft list ruleset` prints it (stateless: without
    counter values and the like, as `nft -s`)."""
    n = _nft()
    n.set_stateless_output(stateless)
    rc, out, err = n.cmd("list ruleset")
    if rc != 0:
        raise RulesetError(f"nft list ruleset: {err.strip()}")
    return out


def set_owned_buckets(owned: Iterable[int], *, run_dir: str | None = None) -> None:
    """Make the owned-bucket set exactly `owned`, atomically (flush and add
    in one transaction: no packet sees a half-updated set)."""
    owned = set(owned)
    if any(not isinstance(b, int) or b < 0 for b in owned):
        raise ValueError(f"bucket numbers must be non-negative integers: {sorted(owned, key=str)}")
    cmd = f"flush set inet {TABLE} {OWNED_SET}\n"
    if owned:
        cmd += f"add element inet {TABLE} {OWNED_SET} {{ {_elements(owned)} }}\n"
    with _locked(run_dir):
        rc, _, err = _nft().cmd(cmd)
    if rc != 0:
        raise RulesetError(f"cannot update set inet {TABLE} {OWNED_SET}: {err.strip().splitlines()[0]}")


def owned_buckets() -> frozenset[int] | None:
    """Contents of the owned-bucket set; None when the ruleset has no such set."""
    n = _nft()
    n.set_json_output(True)
    rc, out, _ = n.cmd(f"list set inet {TABLE} {OWNED_SET}")
    if rc != 0:
        return None
    for item in json.loads(out).get("nftables", []):
        if "set" in item:
            return frozenset(int(e) for e in item["set"].get("elem", []))
    return None


# --- diff -------------------------------------------------------------------------

def normalized(text: str, owned: Iterable[int] = ()) -> str:
    """The listing nft would print after loading `text`: loaded into a
    throwaway network namespace (unshare), listed, thrown away."""
    extra = ""
    owned = set(owned)
    if owned:
        extra = f"add element inet {TABLE} {OWNED_SET} {{ {_elements(owned)} }}\n"
    payload = _PREFIX + text + ("" if text.endswith("\n") else "\n") + extra
    cp = subprocess.run(["unshare", "--net", "--", sys.executable, "-m", "fwcluster.nft", "normalize"],
                        input=payload, capture_output=True, text=True, timeout=30,
                        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    if cp.returncode != 0:
        raise RulesetError(f"cannot load the rendered ruleset in a scratch namespace: "
                           f"{cp.stderr.strip().splitlines()[-1] if cp.stderr.strip() else cp.returncode}")
    return cp.stdout


def diff(r: Rendered) -> str:
    """Unified diff from the running ruleset to the rendered one ("" = same).
    The owned-bucket set's contents are runtime state and not a difference."""
    owned = owned_buckets() if r.context["balance"]["active"] else None
    want = normalized(r.text, owned or ())
    have = running(stateless=True)  # counters count, they are not configuration
    return "".join(difflib.unified_diff(have.splitlines(keepends=True), want.splitlines(keepends=True),
                                        "running", "rendered"))


def _main(argv: list[str]) -> int:
    # Internal helper for normalized(): runs inside the scratch namespace.
    if argv != ["normalize"]:
        print("usage: python -m fwcluster.nft normalize < ruleset", file=sys.stderr)
        return 2
    rc, _, err, _ = _run_file(sys.stdin.read(), dry_run=False)
    if rc != 0:
        print(err.strip(), file=sys.stderr)
        return 1
    sys.stdout.write(running(stateless=True))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
