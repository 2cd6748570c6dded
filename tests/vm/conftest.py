"""VM lab tests: two appliances from the built image under qemu, end to end.
One lab (two booted members, client and server sessions) is shared by every
test of the session, in file order; see tests/vm/lab.py and docs/vm-lab.md.
The upgrade tests (test_vm_upgrade.py, marker `upgrade`, `make
test-upgrade`) boot a lab of their own from the previous protocols' build."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

from tests.image.conftest import ROOT, cached_build
from tests.vm.lab import Sessions, VMLab


def pytest_configure(config):
    config.addinivalue_line("markers", "upgrade: the cross-version upgrade in the VM lab "
                            "(make test-upgrade; make test leaves it out)")


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "VM lab tests need root (network namespaces, tap devices)"
    for tool in ("ip", "qemu-system-x86_64", "qemu-img", "qemu-io", "mmdebstrap", "ssh-keygen", "ssh"):
        if not shutil.which(tool):
            return f"VM lab tests need {tool} (make image-deps)"
    return None


def skip_unless_possible() -> None:
    why = _unavailable()
    if why:
        pytest.skip(why)


@contextlib.contextmanager
def booted_lab(image: Path, name: str):
    """Both members booted from `image`, the lab's work in build/<name>,
    the 9p share (bundles) in build/<name>-share; `lab.state` carries what
    one test leaves for the next (sessions, figures)."""
    share = ROOT / "build" / f"{name}-share"
    share.mkdir(parents=True, exist_ok=True)
    with VMLab(image, ROOT / "build" / name, share=share) as lab:
        lab.boot_all()
        lab.state = {}
        yield lab
        s = lab.state.get("sessions")
        if s:
            s.stop()
        print(f"\nVM lab: consoles in {lab.work} (kvm={lab.kvm}); figures: {lab.state.get('figures')}")


def lab_sessions(lab, duration: float = 1200) -> Sessions:
    """The lab's 200 sessions, started once; client and server stop by
    themselves after `duration` s (longer than every test that uses them)."""
    if "sessions" not in lab.state:
        lab.state["sessions"] = Sessions(lab, duration=duration)
    return lab.state["sessions"]


@pytest.fixture(scope="session")
def vmlab():
    skip_unless_possible()
    with booted_lab(cached_build(), "vm-lab") as lab:
        yield lab


@pytest.fixture(scope="session")
def sessions(vmlab) -> Sessions:
    return lab_sessions(vmlab)
