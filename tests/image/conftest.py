"""Fixtures of the image tests: one real image build, cached by its inputs.

The build is reused while nothing that goes into the image changed (profile,
overlays, builder, fwcluster and syncd sources), so a warm `make test` does
not rebuild. Downloaded .debs and the base roots are cached in
$FWCLUSTER_CACHE (image/build.py cache_dir) either way.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "test-image"
INPUT_GLOBS = ["image/*.py", "image/profiles/*.toml", "overlays/**/*", "fwcluster/**/*.py",
               "syncd/**/*.py"]
# Test drivers, not part of the image: editing them must not cost a rebuild.
NOT_INPUTS = {"image/qemu.py", "image/seed.py"}


def input_key() -> str:
    h = hashlib.sha256()
    files = sorted({p for g in INPUT_GLOBS for p in ROOT.glob(g)
                    if p.is_file() and "__pycache__" not in p.parts
                    and str(p.relative_to(ROOT)) not in NOT_INPUTS})
    for p in files:
        h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def cache_entry(key: str, protocols: str = "current") -> Path:
    """Where the build of inputs `key` with a protocol cap is kept: one
    entry per cap, so the capped image of the upgrade test and the default
    one are cached side by side and never taken for each other."""
    return CACHE / (key if protocols == "current" else f"{key}-{protocols}")


def cached_build(protocols: str = "current") -> Path:
    """A default-profile image (no .xz), built once per input change (the
    VM lab in tests/vm uses it too); protocols="previous": the build capped
    to the previous release's protocol versions (tests/vm/test_vm_upgrade.py
    boots it). Its .raucb is next to it."""
    from image import profile
    from image.build import build

    key = input_key()
    out = cache_entry(key, protocols)
    done = out / "done"
    if not done.exists():
        for stale in CACHE.glob("*") if CACHE.exists() else ():
            if stale.name != key and not stale.name.startswith(f"{key}-"):
                shutil.rmtree(stale)  # an older tree's builds
        shutil.rmtree(out, ignore_errors=True)
        prof = profile.load(ROOT / "image/profiles/default.toml")
        build(prof, out, work=ROOT / "build" / "work-test", compress=False,
              guid_seed=out.name, protocols=protocols)
        done.write_text(key + "\n")
    (img,) = out.glob("*.img")
    return img


@pytest.fixture(scope="session")
def built_image() -> Path:
    return cached_build()
