"""VM lab tests: two appliances from the built image under qemu, end to end.
One lab (two booted members, client and server sessions) is shared by every
test of the session, in file order; see tests/vm/lab.py and docs/vm-lab.md."""
from __future__ import annotations

import os
import shutil

import pytest

from tests.image.conftest import ROOT, cached_build
from tests.vm.lab import Sessions, VMLab


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "VM lab tests need root (network namespaces, tap devices)"
    for tool in ("ip", "qemu-system-x86_64", "qemu-img", "qemu-io", "mmdebstrap", "ssh-keygen", "ssh"):
        if not shutil.which(tool):
            return f"VM lab tests need {tool} (make image-deps)"
    return None


@pytest.fixture(scope="session")
def vmlab():
    why = _unavailable()
    if why:
        pytest.skip(why)
    image = cached_build()
    share = ROOT / "build" / "vm-share"  # bundles for the upgrade tests (test_vm_upgrade.py)
    share.mkdir(parents=True, exist_ok=True)
    with VMLab(image, ROOT / "build" / "vm-lab", share=share) as lab:
        lab.boot_all()
        lab.state = {}  # what one test leaves for the next (sessions, figures)
        yield lab
        s = lab.state.get("sessions")
        if s:
            s.stop()
        print(f"\nVM lab: consoles in {lab.work} (kvm={lab.kvm}); figures: {lab.state.get('figures')}")


@pytest.fixture(scope="session")
def sessions(vmlab) -> Sessions:
    if "sessions" not in vmlab.state:
        vmlab.state["sessions"] = Sessions(vmlab)
    return vmlab.state["sessions"]
