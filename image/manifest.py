"""Image manifest: what went into an image (pure).

The manifest is plain text, one `package version architecture` line per
Debian package, preceded by `# key: value` header lines (fwcluster version,
release, build id, partition layout). It is written next to the image and
into the image as /usr/lib/fwcluster/manifest.
"""
from __future__ import annotations

from dataclasses import dataclass

DPKG_QUERY_FORMAT = r"${Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n"


class ManifestError(Exception):
    pass


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    architecture: str


def parse_dpkg_query(text: str) -> list[Package]:
    """Installed packages from `dpkg-query -W -f DPKG_QUERY_FORMAT`, sorted.
    Packages not fully installed ("ii") are left out: they are not in the image."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 4 or not all(fields[:3]):
            raise ManifestError(f"dpkg-query line {n}: expected 4 tab-separated fields: {line!r}")
        name, version, arch, status = fields
        if status.strip() != "ii":
            continue
        out.append(Package(name, version, arch))
    return sorted(out, key=lambda p: p.name)


def render(packages: list[Package], header: dict[str, str]) -> str:
    lines = [f"# {k}: {v}" for k, v in header.items()]
    lines += [f"{p.name} {p.version} {p.architecture}" for p in packages]
    return "\n".join(lines) + "\n"


def parse(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(header, {package: version}) from a rendered manifest."""
    header, pkgs = {}, {}
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("# "):
            key, sep, value = line[2:].partition(": ")
            if not sep:
                raise ManifestError(f"manifest line {n}: header without ': ': {line!r}")
            header[key] = value
        elif line.strip():
            fields = line.split()
            if len(fields) != 3:
                raise ManifestError(f"manifest line {n}: expected 'package version arch': {line!r}")
            pkgs[fields[0]] = fields[1]
    return header, pkgs
