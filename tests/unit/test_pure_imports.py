"""The pure cores stay pure: a module under a `core` package imports only
computation from the standard library and other cores. No sockets, no
asyncio, no os, no subprocess, no netlink, no nftables: whatever such a
module decides can be tested with no kernel and no clock."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE_PACKAGES = ("fwcluster.core", "fwcluster.carp.core", "syncd.core")
# Standard-library modules that compute and touch nothing outside the process.
ALLOWED_STDLIB = {
    "__future__", "ast", "base64", "bisect", "collections", "dataclasses", "difflib", "enum",
    "errno", "functools", "hashlib", "heapq", "hmac", "ipaddress", "itertools", "json", "math",
    "operator", "posixpath", "random", "re", "string", "struct", "tomllib", "typing", "uuid",
    "zlib",
}
# Third-party modules that only compute (zxcvbn: a password-guessing model
# over word lists it carries as Python data).
PURE_THIRD_PARTY = {"zxcvbn"}
FORBIDDEN = {"socket", "asyncio", "os", "subprocess", "pyroute2", "nftables", "select",
             "signal", "threading", "time", "shutil", "tempfile", "pathlib", "fcntl", "ctypes"}


def core_modules() -> list[Path]:
    files = []
    for pkg in CORE_PACKAGES:
        files += sorted((ROOT / pkg.replace(".", "/")).glob("*.py"))
    return files


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_there_are_cores_to_check():
    names = {p.stem for p in core_modules()}
    assert {"machine", "wire", "protocol", "config", "hashbuckets"} <= names


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_imports_only_pure_code(path):
    bad = []
    for name in imported(path):
        top = name.split(".")[0]
        if top in FORBIDDEN:
            bad.append(name)
        elif top in ("fwcluster", "syncd"):
            if not any(name == p or name.startswith(p + ".") for p in CORE_PACKAGES):
                bad.append(name)
        elif top not in ALLOWED_STDLIB | PURE_THIRD_PARTY:
            bad.append(name)
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: not allowed in a pure core"


def test_contract_doc_is_generated_from_the_module():
    from fwcluster.core import contract
    assert (ROOT / "docs" / "contract.md").read_text() == contract.render_doc(), \
        "run: python -m fwcluster.core.contract > docs/contract.md"


def test_carp_rules_doc_is_generated_from_the_core():
    from fwcluster.carp import rulesdoc
    assert (ROOT / "docs" / "carp-rules.md").read_text() == rulesdoc.rules_doc(), \
        "run: python -m fwcluster.carp.rulesdoc > docs/carp-rules.md"
