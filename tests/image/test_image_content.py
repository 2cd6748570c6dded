"""The appliance carries product code only: no namespace lab, no test or
benchmark tooling, no demo. Checked on what the builder copies (cheap, every
run) and on the built image's root file system (with the other image tests)."""
from __future__ import annotations

import ast
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from image import customize

ROOT = Path(__file__).resolve().parents[2]
# Trees that hold tooling and never ship (tests/labkit is the lab, bench/ the
# benchmarks); a shipped module must not even import them.
TOOLING = {"tests", "bench"}
TOOLING_FILES = {"lab.py", "conftest.py", "demo.py", "prober.py"}


def _shipped_sources() -> list[Path]:
    """Every file under the packages the builder copies into the image."""
    return sorted(p for pkg in customize.PY_PACKAGES for p in (customize.SRC / pkg).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)


def _imported_tops(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    tops = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            tops |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return tops


def _tooling_name(rel: str) -> bool:
    parts = Path(rel).parts
    return bool(TOOLING & set(parts)) or Path(rel).name in TOOLING_FILES \
        or Path(rel).name.startswith("test_") or "labkit" in parts


def test_builder_installs_only_the_product_packages():
    product = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = product["tool"]["setuptools"]["packages"]["find"]["include"]
    assert set(customize.PY_PACKAGES) == {i.rstrip("*") for i in include}
    assert customize.SRC == ROOT


def test_shipped_packages_hold_no_lab_test_or_bench_tooling():
    files = _shipped_sources()
    assert any(p.name == "carpd.py" for p in files)  # the walk sees the packages
    rels = [str(p.relative_to(ROOT)) for p in files]
    assert [r for r in rels if _tooling_name(r)] == []
    imports = {str(p.relative_to(ROOT)): _imported_tops(p) & TOOLING
               for p in files if p.suffix == ".py"}
    assert {k: v for k, v in imports.items() if v} == {}


def test_overlays_hold_no_lab_test_or_bench_tooling():
    files = [p for p in (ROOT / "overlays").rglob("*") if p.is_file()]
    assert files
    assert [str(p) for p in files if _tooling_name(str(p.relative_to(ROOT / "overlays")))] == []
    mentions = [str(p) for p in files
                if any(s in p.read_text(errors="replace") for s in ("tests.labkit", "bench."))]
    assert mentions == []


def _slot_a(image: Path) -> str:
    """debugfs's name for slot A's file system inside the disk image."""
    from fwcluster.core import slots
    with open(image, "rb") as f:
        part = slots.find_partition(slots.parse_gpt(f.read(34 * 512)), "fwroot-a")
    return f"{image}?offset={part.offset}"


@pytest.mark.image
@pytest.mark.skipif(shutil.which("debugfs") is None, reason="needs debugfs (e2fsprogs)")
def test_built_image_has_no_lab_test_or_bench_tooling(built_image, tmp_path):
    dist = "/" + customize.DIST
    subprocess.run(["debugfs", "-R", f"rdump {dist} {tmp_path}", _slot_a(built_image)],
                   check=True, capture_output=True)
    got = tmp_path / Path(dist).name
    tops = {p.name for p in got.iterdir()}
    assert set(customize.PY_PACKAGES) <= tops  # the dump holds the product
    assert not TOOLING & tops
    rels = [str(p.relative_to(got)) for pkg in customize.PY_PACKAGES for p in (got / pkg).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts]
    assert [r for r in rels if _tooling_name(r)] == []
