"""The version of this fwcluster: the one place it is read at run time.

On the appliance the image builder has written it into fwcluster/_version.py
(the image has no git); in a source tree it is computed from `git describe`
(fwcluster.core.versions.pep440). _version.py is never in the source tree
(.gitignore): a built image is the only place it exists.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent
try:
    from fwcluster.core import versions
except ModuleNotFoundError:
    # setuptools loads this file alone to read __version__ (pyproject.toml)
    sys.path.insert(0, str(SRC))
    from fwcluster.core import versions


def git_describe(src: Path = SRC, dirty: bool = True) -> str | None:
    """`git describe` of the tree at src, None outside a git checkout."""
    argv = ["git", "-C", str(src), "describe", "--tags", "--long", "--always",
            f"--match={versions.TAG_PATTERN}", "--abbrev=12"] + (["--dirty"] if dirty else [])
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 and p.stdout.strip() else None


def from_git(src: Path = SRC, dirty: bool | None = None) -> str | None:
    """The PEP 440 version of the tree at src. dirty=None: whatever git says
    of the whole tree; True/False: the caller knows better (the image
    builder looks only at what goes into the image)."""
    described = git_describe(src, dirty=dirty is None)
    return versions.pep440(described, bool(dirty)) if described else None


@functools.cache
def current() -> str:
    """This code's version: the built image's, else the source tree's."""
    try:
        from fwcluster import _version  # written by image/customize.py
        return _version.VERSION
    except ImportError:
        pass
    return from_git() or f"0.0.0+{versions.UNKNOWN}"


@functools.cache
def protocol_cap() -> str:
    """"current", or "previous" for a build whose protocols are forced back
    to the predecessor's versions (the image builder writes PROTOCOLS into
    _version.py; FWCLUSTER_PROTOCOLS overrides it, for the lab)."""
    cap = os.environ.get("FWCLUSTER_PROTOCOLS")
    if not cap:
        try:
            from fwcluster import _version
            cap = getattr(_version, "PROTOCOLS", None)
        except ImportError:
            pass
    cap = cap or "current"
    versions.speaks("sync", cap)  # an unknown cap fails here, at start, by name
    return cap


def speaks(name: str) -> tuple[int, int]:
    """The (oldest, newest) versions of protocol `name` this build speaks."""
    return versions.speaks(name, protocol_cap())


def release() -> dict:
    """What carpd's and syncd's status say of the code they run (and
    fwcluster_build_info shows): its version, protocol versions, and the
    [oldest, newest] of each negotiated one (after the build's cap)."""
    cap = protocol_cap()
    return {"version": current(), "protocols": versions.protocols(cap),
            "speaks": versions.ranges(cap)}


def __getattr__(name: str):
    # pyproject.toml reads the version as fwcluster.version.__version__
    if name == "__version__":
        return current()
    raise AttributeError(name)
