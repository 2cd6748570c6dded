"""The previous release's tree, for lab tests that run one member on it (not
a test module). Until a release is tagged it is commit PREVIOUS of this
repository (fwcluster 0.1.0, before the liveness proof and FWCC2);
extracted once per session with `git archive` into a scratch directory."""
from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PREVIOUS = "2cf673e"


@functools.cache
def tree() -> Path | None:
    """A directory holding the previous release's source, None when this
    checkout does not have that commit (a shallow clone)."""
    try:
        blob = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", PREVIOUS,
                               "fwcluster", "syncd", "overlays"], capture_output=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    where = Path(tempfile.mkdtemp(prefix=f"fwcluster-{PREVIOUS}-"))
    atexit.register(shutil.rmtree, where, True)
    with tarfile.open(fileobj=BytesIO(blob)) as t:
        t.extractall(where)  # our own repository's commit
    return where


def env() -> dict:
    """The environment that makes a lab daemon run the previous release's code."""
    # PYTHONSAFEPATH: `python -m` must not put the working directory (this
    # tree) before it on sys.path
    return {"PYTHONPATH": str(tree()), "PYTHONSAFEPATH": "1"}
