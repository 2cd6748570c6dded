"""Config bundles (pure): what `fwctl config push` carries, its checks and
its comparison. Staging and installing them is fwcluster.configstore's.

A bundle is cluster.toml, the ruleset template and any named files that live
beside cluster.toml (flat names only). The secret never travels, and neither
does any other member-local file: a receiver refuses a bundle that carries
one whatever the sender did (check_receivable), because a push must not be
able to change who a member is, its secret or its console password.
"""
from __future__ import annotations

import base64
import dataclasses
import difflib
import hashlib
import re

SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
MAX_BUNDLE = 4 << 20  # bytes of file content in one bundle
# Files that belong to one member (image/customize.py CONFIG_LINKS, /config):
# never carried, never installed, whatever the bundle says.
MEMBER_LOCAL = frozenset({"secret", "node", "root-password", "hostname", "resolv.conf",
                          "config-generation.json", "network", "state"})


class BundleError(Exception):
    """A bundle that must not be applied; the message says why, on one line."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    files: dict[str, bytes]
    config_name: str
    generation: int = 0
    origin: str = ""
    created: float = 0.0

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.files):
            data = self.files[name]
            h.update(name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
        return h.hexdigest()

    def to_json(self) -> dict:
        return {"files": {n: base64.b64encode(d).decode() for n, d in self.files.items()},
                "config_name": self.config_name, "generation": self.generation,
                "origin": self.origin, "created": self.created}

    @classmethod
    def from_json(cls, obj: dict) -> "Bundle":
        try:
            files = {str(n): base64.b64decode(d, validate=True) for n, d in obj["files"].items()}
            b = cls(files, str(obj["config_name"]), int(obj.get("generation", 0)),
                    str(obj.get("origin", "")), float(obj.get("created", 0.0)))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BundleError(f"malformed bundle: {e}") from None
        check_names(b)
        return b


def check_names(b: Bundle) -> None:
    if b.config_name not in b.files:
        raise BundleError(f"bundle has no {b.config_name}")
    total = 0
    for name, data in b.files.items():
        if not SAFE_NAME.match(name):
            raise BundleError(f"file name {name!r} is not allowed (flat names beside cluster.toml only)")
        total += len(data)
    if total > MAX_BUNDLE:
        raise BundleError(f"bundle is {total} bytes, more than {MAX_BUNDLE}")


def check_receivable(b: Bundle, own_config: str, own_secret: str) -> None:
    """What a receiver accepts: its own config file's name and files that are
    not member-local (nor the name of this member's secret file). The
    template renders sandboxed and cannot include a member-local file
    (fwcluster.nft)."""
    check_names(b)
    if b.config_name != own_config:
        raise BundleError(f"bundle's config is {b.config_name!r}, this member's is {own_config!r}")
    local = MEMBER_LOCAL | {own_secret}
    for name in sorted(b.files):
        if name in local:
            raise BundleError(f"bundle carries {name!r}, a member-local file; refused")


def stale(own_generation: int, peers: dict[str, dict]) -> list[str]:
    """Peers known to hold a newer generation than ours (we must catch up)."""
    return sorted(n for n, p in peers.items() if p.get("generation", 0) > own_generation)


def diff_bundles(local: Bundle, remote: Bundle, remote_name: str) -> str:
    out = []
    for name in sorted(set(local.files) | set(remote.files)):
        a = local.files.get(name, b"").decode(errors="replace").splitlines(keepends=True)
        b = remote.files.get(name, b"").decode(errors="replace").splitlines(keepends=True)
        out.extend(difflib.unified_diff(a, b, f"local/{name}", f"{remote_name}/{name}"))
    return "".join(out)
