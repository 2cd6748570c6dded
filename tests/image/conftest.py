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


def cached_build() -> Path:
    """A default-profile image (no .xz), built once per input change (the
    VM lab in tests/vm uses it too)."""
    from image import profile
    from image.build import build

    key = input_key()
    out = CACHE / key
    done = out / "done"
    if not done.exists():
        if CACHE.exists():
            shutil.rmtree(CACHE)
        prof = profile.load(ROOT / "image/profiles/default.toml")
        build(prof, out, work=ROOT / "build" / "work-test", compress=False, guid_seed=key)
        done.write_text(key + "\n")
    (img,) = out.glob("*.img")
    return img


@pytest.fixture(scope="session")
def built_image() -> Path:
    return cached_build()
