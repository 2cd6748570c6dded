"""make demo-vm: two appliances from the built image, sessions through a hard
power cut of the master and its return, printed as it happens.

    python -m tests.vm [--image build/fwcluster-...img] [--sessions 200]

Without --image: the newest build/*.img of `make image`, else the image
tests' cached build (built if needed).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tests.vm.lab import ROOT, Sessions, VMLab


def pick_image(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    made = sorted((ROOT / "build").glob("*.img"), key=lambda p: p.stat().st_mtime)
    if made:
        return made[-1]
    from tests.image.conftest import cached_build
    return cached_build()


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.vm")
    ap.add_argument("--image")
    ap.add_argument("--sessions", type=int, default=200)
    a = ap.parse_args(argv)
    image = pick_image(a.image)
    say(f"image {image}")
    with VMLab(image, ROOT / "build" / "vm-demo") as lab:
        say(f"booting fw1 and fw2 ({'KVM' if lab.kvm else 'TCG: a few minutes'}); "
            f"consoles in {lab.work}")
        lab.boot_all()
        for m in lab.vms:
            say(f"{m}: vips {lab.vip_states(m)}")
        s = Sessions(lab, a.sessions)
        time.sleep(5)
        say(f"sessions: {s.report()}")
        say("power cut of fw1 (SIGKILL of its qemu)")
        lab.kill("fw1")
        time.sleep(15)
        r = s.report()
        say(f"after failover: {r['open']}/{r['sessions']} sessions open, gap {r['max_gap_s']} s; "
            f"fw2 vips {lab.vip_states('fw2')}")
        say("fw1 boots again (it waits for its bulk sync before taking the vips back)")
        lab.start("fw1")
        lab.login("fw1")
        lab.wait("fw1 master", lambda: set(lab.vip_states("fw1").values()) == {"MASTER"}, 180, 2)
        time.sleep(5)
        r = s.report()
        say(f"after failback: {r['open']}/{r['sessions']} sessions open, gap {r['max_gap_s']} s")
        s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
