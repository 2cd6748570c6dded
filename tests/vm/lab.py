"""VM lab: two appliances booted from the built image under qemu, wired
like the namespace lab but with the real image on both members.

    client ── [brlan] ── lan0  fw1, fw2  wan0 ── [brwan] ── server
                               sync0
                                 └── [brsync] ── mgmt (the operator's ssh)

The bridges, the members' tap devices and the qemu processes are in the
namespace "<prefix><pid>-sw"; client, server and mgmt have namespaces of
their own behind veth pairs. Each member boots from its own qcow2 overlay
on the shared image, with /config seeded by `python -m image seed-config`;
every member's /config authorizes the lab's throwaway ssh key (made with
ssh-keygen when the lab starts).
Addresses come from the documentation ranges only. Namespaces are deleted
and our qemu processes killed (by PID) when the lab is left, also on an
exception, and by the namespace lab's safety net (tests.labkit.reaper).

    with VMLab(image, workdir) as lab:
        lab.boot_all()
        lab.vm("fw1").check("fwctl status --json")
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from image.qemu import VM, VMError, kvm_works
from image.seed import write_member_config
from tests.labkit import reaper

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "fwv"
ROOT_PASSWORD = "vm-lab-root-pass"
SECRET = "vm-lab-sync-passphrase-2001db8"
SYNC_HOLD = 60  # seconds: the rebooted member waits for its bulk sync at most this long
METRICS = "127.0.0.1:9100"
BOOT_TIMEOUT = 480  # TCG, two guests on two cores
CLIENT, SERVER, MGMT = "192.0.2.100", "198.51.100.100", "203.0.113.100"
LAN_VIP, WAN_VIP = "192.0.2.1", "198.51.100.1"
SEGMENTS = {"lan": ("lan0", "192.0.2.1{k}/24"), "wan": ("wan0", "198.51.100.1{k}/24"),
            "sync": ("sync0", "203.0.113.{k}/24")}
MEMBERS = {"fw1": 1, "fw2": 2}
# --- [[dhcp]] (issue 22, tests/vm/dhcp.py): Kea HA on both members
# serves the client's LAN; the pool is clear of the client, vip and members.
DHCP_POOL = "192.0.2.150-192.0.2.199"
DHCP_TOML = (f'\n[[dhcp]]\ninterface = "lan0"\npools = ["{DHCP_POOL}"]\n\n'
             '[dhcp_ha]\npartner_down = 3\n')
# --- end [[dhcp]]

# --- issue 20: virtual MAC and IPv6 first hop (tests/vm/test_vm_cluster.py) ---
# The LAN vip answers with the VRRP MAC of vhid 1 (the client pins it);
# IPv6: a global vip per segment (the LAN one names the prefix the router
# adverts carry, the WAN one is the server's gateway) and the link-local
# router vip that sends the adverts. Each member has an IPv6 address of its
# own on lan0 and wan0 (a networkd drop-in): IPv6 adverts leave from it.
LAN_VIP_OPTIONS = 'mac = "virtual"\n'
LAN6, SERVER6, WAN_VIP6 = "2001:db8:1::/64", "2001:db8:2::100", "2001:db8:2::1"
ROUTER6, RA_INTERVAL = "fe80::1", 2
VIPS6 = {3: ("lan0", "2001:db8:1::1/64", ""), 4: ("wan0", f"{WAN_VIP6}/64", ""),
         5: ("lan0", f"{ROUTER6}/64", f"ra_interval = {RA_INTERVAL}\n")}
OWN6 = {"lan0": "2001:db8:1::1{k}/64", "wan0": "2001:db8:2::1{k}/64"}
VHIDS = [1, 2, *VIPS6]


def vips6_toml() -> str:
    return "".join(f'[[vip]]\nvhid = {vhid}\ninterface = "{ifname}"\naddress = "{addr}"\n{extra}\n'
                   for vhid, (ifname, addr, extra) in VIPS6.items())


def write_own6(cfg: Path, k: int) -> None:
    for ifname, addr in OWN6.items():
        d = cfg / "network" / f"20-{ifname}.network.d"
        d.mkdir()
        (d / "ipv6.conf").write_text(f"[Network]\nAddress={addr.format(k=k)}\n")
# --- end of issue 20's fragment ---


def cluster_toml() -> str:
    members = "".join(f'[[member]]\nname = "{m}"\nsync_address = "203.0.113.{k}"\n'
                      f"advskew = {0 if k == 1 else 100}\n\n" for m, k in MEMBERS.items())
    return ('[cluster]\nname = "vmlab"\nsecret_file = "/etc/fwcluster/secret"\n\n'
            '[sync]\ninterface = "sync0"\n\n'
            f"[carp]\nsync_hold = {SYNC_HOLD}\n\n" + members +
            f'[[vip]]\nvhid = 1\ninterface = "lan0"\naddress = "{LAN_VIP}/24"\n{LAN_VIP_OPTIONS}\n'
            f'[[vip]]\nvhid = 2\ninterface = "wan0"\naddress = "{WAN_VIP}/24"\n\n'
            + vips6_toml() +
            f'[metrics]\nlisten = "{METRICS}"\n' + DHCP_TOML)


def mac(k: int, seg: str) -> str:
    return f"52:54:00:0f:{k:02x}:{list(SEGMENTS).index(seg):02x}"


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip"] + (["-n", ns] if ns else []) + list(args)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise VMError(f"{' '.join(argv)}: {p.stderr.strip()}")
    return p


class VMLab(reaper.TornDown):
    def __init__(self, image: Path, work: Path, prefix: str = PREFIX, kvm: bool | None = None,
                 share: Path | None = None):
        self.image, self.work, self.prefix = image, work, prefix
        self.share = share  # a host directory every member sees as 9p tag "upgrade" (bundles)
        self.tag = reaper.free_tag(prefix)
        self.kvm = kvm if kvm is not None else kvm_works(image, ROOT / "build/stamps/qemu-accel")
        self.vms: dict[str, VM] = {}
        self.boots: dict[str, float] = {}
        self.host_keys: dict[str, list[str]] = {}  # member: its ssh host key at each boot
        self.procs: list[subprocess.Popen] = []

    def ns(self, role: str) -> str:
        return f"{self.tag}-{role}"

    # --- network -------------------------------------------------------------
    def setup(self) -> None:
        # the namespace lab's safety net: torn down at exit and on SIGTERM;
        # namespaces of earlier labs whose process died are deleted
        reaper.register(self)
        reaper.cleanup_stale(self.prefix)
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        sw = self.ns("sw")
        for role in ("sw", "client", "server", "mgmt"):
            ip("netns", "add", self.ns(role))
            ip("link", "set", "lo", "up", ns=self.ns(role))
        for seg in SEGMENTS:
            # no snooping: CARP adverts are multicast and must reach every port
            ip("link", "add", f"br{seg}", "type", "bridge", "mcast_snooping", "0", ns=sw)
            ip("link", "set", f"br{seg}", "up", ns=sw)
            for m, k in MEMBERS.items():
                tap = f"{m}{seg}"
                ip("tuntap", "add", "dev", tap, "mode", "tap", ns=sw)
                ip("link", "set", tap, "master", f"br{seg}", "up", ns=sw)
        for role, seg, addr, gw in (("client", "lan", CLIENT, LAN_VIP),
                                    ("server", "wan", SERVER, WAN_VIP),
                                    ("mgmt", "sync", MGMT, None)):
            ip("link", "add", f"v{role}", "type", "veth", "peer", "name", "eth0",
               "netns", self.ns(role), ns=sw)
            ip("link", "set", f"v{role}", "master", f"br{seg}", "up", ns=sw)
            ip("addr", "add", f"{addr}/24", "dev", "eth0", ns=self.ns(role))
            ip("link", "set", "eth0", "up", ns=self.ns(role))
            if gw:
                ip("route", "add", "default", "via", gw, ns=self.ns(role))
        self.ssh_key = self.work / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vm-lab",
                        "-f", str(self.ssh_key)], check=True, capture_output=True)

    def teardown(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for vm in self.vms.values():
            self._stop_vm(vm)
        for role in ("client", "server", "mgmt", "sw"):
            ip("netns", "delete", self.ns(role), check=False)
        reaper.unregister(self)

    # --- members -------------------------------------------------------------
    def make_disk(self, member: str) -> Path:
        """A qcow2 overlay on the image with this member's /config."""
        k = MEMBERS[member]
        disk = self.work / f"{member}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        str(self.image.resolve()), str(disk)], check=True)
        cfg = self.work / f"{member}-config"
        nics = [(mac(k, seg), name, addr.format(k=k)) for seg, (name, addr) in SEGMENTS.items()]
        write_member_config(cfg, member, cluster_toml(), nics, SECRET, ROOT_PASSWORD)
        write_own6(cfg, k)
        subprocess.run([sys.executable, "-m", "image", "seed-config", str(disk), str(cfg),
                        "--authorized-key", f"{self.ssh_key}.pub"],
                       check=True, capture_output=True, cwd=ROOT)
        return disk

    def start(self, member: str, uefi: bool = False) -> VM:
        k = MEMBERS[member]
        disk = self.work / f"{member}.qcow2"
        if not disk.exists():
            disk = self.make_disk(member)
        taps = [(mac(k, seg), f"{member}{seg}") for seg in SEGMENTS]
        vm = VM(disk, self.work / f"{member}-console.log", kvm=self.kvm, uefi=uefi, memory=640,
                cpus=1, taps=taps, netns=self.ns("sw"), share=self.share)
        self.vms[member] = vm.start()
        return vm

    def login(self, member: str) -> float:
        vm = self.vms[member]
        self.boots[member] = vm.login(BOOT_TIMEOUT, password=ROOT_PASSWORD)
        # The login prompt comes before multi-user.target (it waits for the health check).
        vm.check("timeout 240 sh -c 'until systemctl is-active -q multi-user.target; do sleep 1; done'",
                 timeout=270)
        # kept on /config across reboots and upgrades (tests/vm/test_vm_ssh.py)
        self.host_keys.setdefault(member, []).append(
            vm.run("cat /config/ssh/ssh_host_ed25519_key.pub")[1])
        return self.boots[member]

    def boot_all(self) -> None:
        """Both members at once: a TCG boot takes minutes, two in parallel barely more."""
        for m in MEMBERS:
            self.start(m)
        with ThreadPoolExecutor(len(MEMBERS)) as ex:
            list(ex.map(self.login, MEMBERS))

    def vm(self, member: str) -> VM:
        return self.vms[member]

    def kill(self, member: str) -> None:
        """Power cut: SIGKILL to this member's qemu (our own PID)."""
        vm = self.vms[member]
        os.kill(vm.proc.pid, signal.SIGKILL)
        vm.proc.wait(10)
        self._stop_vm(vm)
        del self.vms[member]

    @staticmethod
    def _stop_vm(vm: VM) -> None:
        if vm.proc and vm.proc.poll() is None:
            os.kill(vm.proc.pid, signal.SIGKILL)
            vm.proc.wait(10)
        vm.stop()

    def fwctl(self, member: str, *args: str, timeout: float = 60) -> tuple[int, dict | str]:
        """fwctl ARGS --json in the guest: (exit status, parsed reply or raw text)."""
        rc, out = self.vms[member].run("fwctl " + " ".join(args) + " --json", timeout=timeout)
        try:
            return rc, json.loads(out)
        except json.JSONDecodeError:
            return rc, out

    def vip_states(self, member: str) -> dict[int, str]:
        rc, st = self.fwctl(member, "status")
        return {v["vhid"]: v["state"] for v in st.get("vips", [])} if isinstance(st, dict) else {}

    def wait(self, what: str, predicate, timeout: float, interval: float = 1.0):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise VMError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(interval)

    # --- hosts behind the cluster -------------------------------------------
    def popen(self, role: str, argv: list[str]) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(role), *argv], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.procs.append(p)
        return p


class Sessions:
    """The traffic client and server of tests.vm.traffic in the lab."""

    def __init__(self, lab: VMLab, sessions: int = 200, duration: float = 1200,
                 server: str = SERVER):
        py, target = sys.executable, f"{server}:7000"
        self.server = lab.popen("server", [py, "-m", "tests.vm.traffic", "server", "--listen",
                                           target, "--duration", str(duration)])
        if self.server.stdout.readline().strip() != "listening":
            raise VMError("traffic server did not start")
        self.client = lab.popen("client", [py, "-m", "tests.vm.traffic", "client", "--target",
                                           target, "--sessions", str(sessions),
                                           "--duration", str(duration)])
        line = self.client.stdout.readline()
        if not line.startswith('{"connected"'):
            raise VMError(f"traffic client did not connect: {line!r}")

    def report(self) -> dict:
        self.client.stdin.write("report\n")
        self.client.stdin.flush()
        return json.loads(self.client.stdout.readline())

    def stop(self) -> None:
        for p in (self.client, self.server):
            if p.poll() is None:
                p.kill()
                p.wait(10)
