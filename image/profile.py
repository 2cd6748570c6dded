"""Image profile (image/profiles/*.toml) -> validated Profile.

Pure: reads a TOML file, checks every key and names the offending one in a
one-line error, so a typo in a profile never silently builds a different
appliance.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ProfileError(Exception):
    def __init__(self, file: str, key: str, reason: str):
        self.file, self.key, self.reason = str(file), key, reason
        super().__init__(f"{file}: {key}: {reason}" if key else f"{file}: {reason}")


REQUIRED = object()

# table -> key -> (type, default)
_SCHEMA: dict[str, dict[str, tuple[type, Any]]] = {
    "image": {
        "name": (str, "fwcluster"),
        "release": (str, REQUIRED),
        "architecture": (str, "amd64"),
        "mirror": (str, "http://deb.debian.org/debian"),
        "size_mib": (int, REQUIRED),
        "hostname": (str, "fwcluster"),
        "serial_console": (str, "ttyS0,115200"),
        "compress_level": (int, 6),
    },
    "layout": {
        "bios_grub_mib": (int, 1),
        "esp_mib": (int, 32),
        "config_mib": (int, 32),
    },
    "packages": {
        "include": (list, REQUIRED),
        "extra": (list, []),
        "exclude_paths": (list, []),
        "keep_paths": (list, []),
    },
    "overlays": {"dirs": (list, ["overlays/base", "overlays/cluster"])},
    # PyPI wheels (pure Python) for what Debian's package of the release is
    # too old for; pinned "name==version".
    "python": {"wheels": (list, [])},
}
_REQUIRED_TABLES = ("image", "packages")
ARCHITECTURES = ("amd64",)  # the bootloader set-up is x86 (BIOS + UEFI)
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_SERIAL = re.compile(r"^ttyS[0-9]+,[0-9]+$")


@dataclass(frozen=True)
class Profile:
    path: str
    name: str
    release: str
    architecture: str
    mirror: str
    size_mib: int
    hostname: str
    serial_console: str
    compress_level: int
    bios_grub_mib: int
    esp_mib: int
    config_mib: int
    packages: tuple[str, ...]
    exclude_paths: tuple[str, ...]
    keep_paths: tuple[str, ...]
    overlays: tuple[str, ...]
    wheels: tuple[str, ...] = ()

    def with_overlays(self, extra: list[str]) -> "Profile":
        from dataclasses import replace
        return replace(self, overlays=self.overlays + tuple(extra))


def _check_table(path, name, table, schema) -> dict:
    if not isinstance(table, dict):
        raise ProfileError(path, name, "must be a table")
    for key in table:
        if key not in schema:
            raise ProfileError(path, f"{name}.{key}", f"unknown key (known: {', '.join(schema)})")
    out = {}
    for key, (typ, default) in schema.items():
        if key not in table:
            if default is REQUIRED:
                raise ProfileError(path, f"{name}.{key}", "missing required key")
            out[key] = default
            continue
        value = table[key]
        if (typ is int and isinstance(value, bool)) or not isinstance(value, typ):
            tname = {"str": "a string", "int": "an integer", "list": "a list"}[typ.__name__]
            raise ProfileError(path, f"{name}.{key}", f"must be {tname}, got {value!r}")
        if typ is list and not all(isinstance(v, str) and v for v in value):
            raise ProfileError(path, f"{name}.{key}", "must be a list of non-empty strings")
        out[key] = value
    return out


def parse(data: dict, path: str = "<profile>") -> Profile:
    for top in data:
        if top not in _SCHEMA:
            raise ProfileError(path, top, f"unknown table (known: {', '.join(_SCHEMA)})")
    for top in _REQUIRED_TABLES:
        if top not in data:
            raise ProfileError(path, top, "missing required table")
    t = {name: _check_table(path, name, data.get(name, {}), schema)
         for name, schema in _SCHEMA.items()}
    img, lay, pkg = t["image"], t["layout"], t["packages"]

    if not re.fullmatch(r"[a-z]+", img["release"]):
        raise ProfileError(path, "image.release", f"{img['release']!r} is not a Debian codename")
    if img["architecture"] not in ARCHITECTURES:
        raise ProfileError(path, "image.architecture",
                           f"{img['architecture']!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", img["name"]):
        raise ProfileError(path, "image.name", f"{img['name']!r}: use lower-case letters, digits, - and _")
    if not img["mirror"].startswith(("http://", "https://", "file:/")):
        raise ProfileError(path, "image.mirror", f"{img['mirror']!r} is not an http(s) or file URL")
    if not _HOSTNAME.match(img["hostname"]):
        raise ProfileError(path, "image.hostname", f"{img['hostname']!r} is not a valid host name")
    if img["serial_console"] and not _SERIAL.match(img["serial_console"]):
        raise ProfileError(path, "image.serial_console",
                           f"{img['serial_console']!r}: expected e.g. \"ttyS0,115200\" or \"\" for none")
    if not 0 <= img["compress_level"] <= 9:
        raise ProfileError(path, "image.compress_level", f"{img['compress_level']} is outside 0-9")
    for key, lo in (("bios_grub_mib", 1), ("esp_mib", 16), ("config_mib", 8)):
        if not lo <= lay[key] <= 4096:
            raise ProfileError(path, f"layout.{key}", f"{lay[key]} is outside {lo}-4096")
    for key in ("include", "extra"):
        for p in pkg[key]:
            if not _PACKAGE.match(p):
                raise ProfileError(path, f"packages.{key}", f"{p!r} is not a Debian package name")
    if not pkg["include"]:
        raise ProfileError(path, "packages.include", "must name at least one package")
    for key in ("exclude_paths", "keep_paths"):
        for p in pkg[key]:
            if not p.startswith("/"):
                raise ProfileError(path, f"packages.{key}", f"{p!r} must be an absolute path glob")
    for w in t["python"]["wheels"]:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+", w):
            raise ProfileError(path, "python.wheels", f"{w!r}: pin as name==version")
    if not t["overlays"]["dirs"]:
        raise ProfileError(path, "overlays.dirs", "must name at least one overlay directory")

    # The size check that needs the partition plan is done there; here only
    # the obvious: the fixed parts must leave room for two root slots.
    fixed = 2 + lay["bios_grub_mib"] + lay["esp_mib"] + lay["config_mib"]
    if img["size_mib"] < fixed + 2 * 128:
        raise ProfileError(path, "image.size_mib",
                           f"{img['size_mib']} MiB leaves less than 128 MiB per root slot")

    return Profile(
        path=path, name=img["name"], release=img["release"], architecture=img["architecture"],
        mirror=img["mirror"], size_mib=img["size_mib"], hostname=img["hostname"],
        serial_console=img["serial_console"], compress_level=img["compress_level"],
        bios_grub_mib=lay["bios_grub_mib"], esp_mib=lay["esp_mib"], config_mib=lay["config_mib"],
        packages=tuple(dict.fromkeys(pkg["include"] + pkg["extra"])),
        exclude_paths=tuple(pkg["exclude_paths"]), keep_paths=tuple(pkg["keep_paths"]),
        overlays=tuple(t["overlays"]["dirs"]), wheels=tuple(t["python"]["wheels"]),
    )


def load(path: str | Path) -> Profile:
    path = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ProfileError(path, "", "no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(path, "", f"not valid TOML: {e}") from None
    return parse(data, path)
