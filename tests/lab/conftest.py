"""Lab tests: real namespaces on the real kernel. They need root and iproute2;
elsewhere they are skipped with the reason."""
from __future__ import annotations

import os
import shutil
import sys

import pytest

# Shared helpers of the lab tests (carp_helpers, sync_helpers) import by
# plain name, whatever pytest's import mode (importlib mode does not put test
# directories on sys.path).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tests.labkit import Lab  # noqa: E402

PY = sys.executable


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces)"
    for tool in ("ip", "nft", "sysctl"):
        if not shutil.which(tool):
            return f"lab tests need {tool}"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _lab_unavailable()
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.lab)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def lab():
    """A fresh two-member lab (IPv4 + IPv6), torn down after the test."""
    with Lab(members=2, prefix="fwt") as lab:
        yield lab


@pytest.fixture
def lab_factory():
    """Build labs with custom options; all are torn down after the test."""
    labs = []

    def make(**kw):
        kw.setdefault("prefix", "fwt")
        lab = Lab(**kw)
        labs.append(lab)
        return lab.__enter__()

    yield make
    for lab in labs:
        lab.teardown()


@pytest.fixture
def carp_lab(lab_factory):
    """lab_factory, named for the tests that run carpd."""
    return lab_factory
