"""Pure parts of the image builder and of the A/B slot logic."""
from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fwcluster.core import slots as ab
from image import boot, manifest, plan, profile

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "image/profiles/default.toml"


def default_data() -> dict:
    return tomllib.loads(DEFAULT.read_text())


# --- profile -----------------------------------------------------------------

def test_default_profile_loads():
    p = profile.load(DEFAULT)
    assert p.release == "trixie" and p.architecture == "amd64"
    assert "python3-nftables" in p.packages and "linux-image-amd64" in p.packages
    assert p.overlays == ("overlays/base", "overlays/cluster")
    # fits a 1 GB (10^9 bytes) card
    assert p.size_mib * 2**20 <= 10**9


@pytest.mark.parametrize("mutate, key", [
    (lambda d: d["image"].update(sizemib=900), "image.sizemib"),
    (lambda d: d["image"].pop("release"), "image.release"),
    (lambda d: d["image"].update(release="Trixie 13"), "image.release"),
    (lambda d: d["image"].update(architecture="arm64"), "image.architecture"),
    (lambda d: d["image"].update(size_mib="940"), "image.size_mib"),
    (lambda d: d["image"].update(size_mib=200), "image.size_mib"),
    (lambda d: d["image"].update(hostname="-bad-"), "image.hostname"),
    (lambda d: d["image"].update(serial_console="com1"), "image.serial_console"),
    (lambda d: d["packages"].update(extra=["tcpdump", "Bad Name"]), "packages.extra"),
    (lambda d: d["packages"].update(exclude_paths=["usr/share/doc/*"]), "packages.exclude_paths"),
    (lambda d: d["layout"].update(esp_mib=True), "layout.esp_mib"),
    (lambda d: d.update(extra={}), "extra"),
    (lambda d: d.pop("packages"), "packages"),
])
def test_bad_profile_names_the_key(mutate, key):
    data = default_data()
    mutate(data)
    with pytest.raises(profile.ProfileError) as e:
        profile.parse(data, "p.toml")
    assert e.value.key == key
    assert str(e.value).startswith(f"p.toml: {key}: ")


def test_wheel_pins_match_requirements():
    """The image gets the same pyroute2 as the test venv."""
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for w in profile.load(DEFAULT).wheels:
        name, version = w.split("==")
        assert pins.get(name) == version, f"{w} differs from requirements.txt"


def test_wheel_pin_format():
    data = default_data()
    data["python"] = {"wheels": ["pyroute2>=0.9"]}
    with pytest.raises(profile.ProfileError) as e:
        profile.parse(data, "p.toml")
    assert e.value.key == "python.wheels"


def test_extra_packages_and_overlays_are_added():
    data = default_data()
    data["packages"]["extra"] = ["tcpdump", "python3"]
    p = profile.parse(data).with_overlays(["/site/overlay"])
    assert p.packages.count("python3") == 1 and p.packages[-1] == "tcpdump"
    assert p.overlays[-1] == "/site/overlay"


def test_profile_file_errors(tmp_path):
    with pytest.raises(profile.ProfileError, match="no such file"):
        profile.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[image\n")
    with pytest.raises(profile.ProfileError, match="not valid TOML"):
        profile.load(bad)


# --- partition plan --------------------------------------------------------------

def test_plan_layout():
    p = plan.make_plan(940, 1, 32, 32, seed="t")
    names = [x.name for x in p.partitions]
    assert names == ["bios", "fwesp", "fwroot-a", "fwroot-b", "fwconfig"]
    a, b = p.slot("a"), p.slot("b")
    assert a.size == b.size and a.size_bytes // 2**20 == 436
    for x in p.partitions:
        assert x.start % plan.MIB_SECTORS == 0 and x.size % plan.MIB_SECTORS == 0
    for x, y in zip(p.partitions, p.partitions[1:]):
        assert x.start + x.size == y.start
    last = p.partitions[-1]
    assert last.start + last.size + plan.MIB_SECTORS == p.total_sectors
    assert p.by_name("bios").type_guid == plan.TYPE_BIOS_BOOT
    assert p.by_name("fwesp").type_guid == plan.TYPE_ESP


def test_plan_guids_reproducible_with_seed_and_lower_case():
    one, two = plan.make_plan(940, 1, 32, 32, seed="x"), plan.make_plan(940, 1, 32, 32, seed="x")
    assert one == two
    assert all(x.uuid == x.uuid.lower() for x in one.partitions)  # by-partuuid links are lower case
    assert plan.make_plan(940, 1, 32, 32).disk_uuid != plan.make_plan(940, 1, 32, 32).disk_uuid


def test_plan_too_small():
    with pytest.raises(ValueError, match="per root slot"):
        plan.make_plan(300, 1, 32, 32)


def test_sfdisk_script_lists_every_partition():
    p = plan.make_plan(940, 1, 32, 32, seed="s")
    script = plan.sfdisk_script(p)
    assert script.startswith("label: gpt\n")
    for x in p.partitions:
        assert f"start={x.start}, size={x.size}, type={x.type_guid}, uuid={x.uuid}, name=\"{x.name}\"" in script


def gpt_bytes(p: plan.Plan) -> bytes:
    """A minimal GPT as sfdisk would write it: header at LBA 1, entries at LBA 2."""
    import uuid
    head = bytearray(34 * 512)
    hdr = bytearray(92)
    hdr[:8] = b"EFI PART"
    struct.pack_into("<QII", hdr, 72, 2, 128, 128)
    head[512:512 + 92] = hdr
    for i, x in enumerate(p.partitions):
        e = bytearray(128)
        e[:16] = uuid.UUID(x.type_guid).bytes_le
        e[16:32] = uuid.UUID(x.uuid).bytes_le
        struct.pack_into("<QQ", e, 32, x.start, x.start + x.size - 1)
        e[56:56 + 2 * len(x.name)] = x.name.encode("utf-16-le")
        head[1024 + 128 * i:1024 + 128 * (i + 1)] = e
    return bytes(head)


def test_gpt_parser_reads_the_plan_back():
    p = plan.make_plan(940, 1, 32, 32, seed="g")
    parts = ab.parse_gpt(gpt_bytes(p))
    assert [x.name for x in parts] == [x.name for x in p.partitions]
    a = ab.find_partition(parts, "fwroot-a")
    assert (a.offset, a.size, a.uuid) == (p.slot("a").offset, p.slot("a").size_bytes, p.slot("a").uuid)
    with pytest.raises(ab.UpgradeError, match="no partition named 'nope'"):
        ab.find_partition(parts, "nope")
    with pytest.raises(ab.UpgradeError, match="no GPT"):
        ab.parse_gpt(bytes(34 * 512))


# --- manifest ------------------------------------------------------------------

def test_manifest_from_dpkg_query():
    text = ("python3\t3.13.5-1\tamd64\tii \n"
            "apt\t3.0.3\tamd64\tii \n"
            "removed\t1.0\tamd64\trc \n")
    pkgs = manifest.parse_dpkg_query(text)
    assert [p.name for p in pkgs] == ["apt", "python3"]
    out = manifest.render(pkgs, {"fwcluster": "0.1.0", "debian": "trixie"})
    assert out.splitlines()[0] == "# fwcluster: 0.1.0"
    header, versions = manifest.parse(out)
    assert header == {"fwcluster": "0.1.0", "debian": "trixie"}
    assert versions == {"apt": "3.0.3", "python3": "3.13.5-1"}


def test_manifest_rejects_garbage():
    with pytest.raises(manifest.ManifestError, match="line 1"):
        manifest.parse_dpkg_query("just one field\n")


# --- grubenv and slot decisions -------------------------------------------------

def test_grubenv_round_trip_is_1024_bytes():
    env = ab.initial_env()
    data = ab.render_grubenv(env)
    assert len(data) == 1024 and data.startswith(b"# GRUB Environment Block\n")
    assert ab.parse_grubenv(data) == env and env["ORDER"] == "A B"
    with pytest.raises(ab.UpgradeError):
        ab.render_grubenv({"x": "a=b"})
    with pytest.raises(ab.UpgradeError):
        ab.parse_grubenv(b"junk")


def test_booted_slot_from_rauc_or_01_cmdline():
    assert ab.booted_slot("root=PARTUUID=x ro rauc.slot=B fwcluster.slot=b") == "B"
    assert ab.booted_slot("BOOT_IMAGE=/vmlinuz root=PARTUUID=x ro fwcluster.slot=a") == "A"
    assert ab.booted_slot("ro quiet") is None


def test_migrate_01_env_puts_booted_slot_on_trial_with_old_good_as_fallback():
    old = {"good_slot": "a", "trial_slot": "", "a_version": "v1", "b_version": "v2"}
    new = ab.migrate_env(old, "B")
    assert new["ORDER"] == "B A" and new["B_OK"] == "1" and new["B_TRY"] == "1"
    assert new["A_OK"] == "1" and new["A_TRY"] == "0" and new["good_slot"] == "a"
    assert ab.is_rauc_env(new) and not ab.is_rauc_env(old)
    assert len(ab.render_grubenv(new)) == 1024
    with pytest.raises(ab.UpgradeError):
        ab.migrate_env(old, "c")


def test_health_commit_fallback_and_steady_state():
    mark = ab.commit_mark("A", None)
    assert not ab.on_trial("A", None, mark + "\n")
    assert ab.on_trial("B", "2026-01-01T00:00:00Z", mark)
    v = ab.health_verdict("B", healthy=True, trial=True, other_good=True)
    assert (v.action, v.mark) == ("commit", "good")
    v = ab.health_verdict("B", healthy=False, trial=True, other_good=True)
    assert (v.action, v.mark) == ("fallback", "bad") and "slot A" in v.message
    # a committed slot, or one with nothing to fall back to, stays (marked good)
    v = ab.health_verdict("A", False, False, True)
    assert (v.action, v.mark) == ("degraded", "good")
    v = ab.health_verdict("A", False, True, False)
    assert (v.action, v.mark) == ("degraded", "good")
    assert ab.health_verdict("A", True, False, True).action == "ok"


def test_rauc_install_failures_become_one_line():
    out = ("installing\n  0% Installing\n 40% Checking bundle failed.\n100% Installing failed.\n"
           "LastError: Failed to check bundle signature: signature verification failed: "
           "Verify error: self-signed certificate\nInstalling `/x.raucb` failed\n")
    line = ab.install_failure(out)
    assert line.startswith("refused: its signature does not verify") and "nothing was written" in line
    assert "\n" not in line and ab.is_refusal(out)
    assert ab.progress_line(" 40% Checking bundle") and not ab.progress_line("LastError: x")
    assert ab.install_failure("LastError: No space left").startswith("installation failed")
    assert not ab.is_refusal("LastError: No space left")


def test_cluster_blocker_names_the_vips_and_the_way_out():
    master = {"maintenance": False, "vips": [{"vhid": 1, "state": "MASTER"},
                                            {"vhid": 2, "state": "MASTER"}]}
    why = ab.cluster_blocker(master)
    assert "vip 1, 2" in why and "fwctl maintenance on" in why and "--force" in why
    assert ab.cluster_blocker(dict(master, maintenance=True)) is None
    assert ab.cluster_blocker({"vips": [{"vhid": 1, "state": "BACKUP"}]}) is None


def test_status_view_from_rauc_json():
    st = {"compatible": "fwcluster-amd64", "booted": "A", "boot_primary": "rootfs.1", "slots": [
        {"rootfs.0": {"class": "rootfs", "device": "/dev/sda3", "bootname": "A",
                      "boot_status": "good", "slot_status": {}}},
        {"rootfs.1": {"class": "rootfs", "device": "/dev/sda4", "bootname": "B", "boot_status": "good",
                      "slot_status": {"bundle": {"version": "0.2.0"},
                                      "installed": {"timestamp": "T1"}}}}]}
    v = ab.status_view(st, {"VERSION": "0.1.0", "BUILD_ID": "x", "SIGNING": "development"})
    assert v["primary"] == "B" and v["signing"] == "development"
    a, b = v["slots"]
    assert a["version"] == "0.1.0" and a["state"] == ["running", "good"]
    assert b["version"] == "0.2.0" and b["installed"] == "T1" and "next boot" in b["state"]


# --- bootloader patching ------------------------------------------------------------

def test_bios_boot_sector_patch_keeps_partition_table():
    boot_img = bytes(range(256)) * 2
    mbr = b"\0" * 440 + b"SIGN" + b"\0\0" + b"P" * 64 + b"\x55\xaa"
    out = boot.patch_boot_img(boot_img, mbr, 2048)
    assert len(out) == 512
    assert struct.unpack_from("<Q", out, boot.KERNEL_SECTOR_OFFSET)[0] == 2048
    assert out[0x1B8:] == mbr[0x1B8:]
    assert out[boot.DRIVE_CHECK_OFFSET:boot.DRIVE_CHECK_OFFSET + 2] == b"\x90\x90"


def test_core_img_block_list():
    core = bytearray(512 * 3 + 100)
    struct.pack_into("<QHH", core, 500, 2, 0, 0x820)
    out = boot.patch_core_img(bytes(core), 2048, 2048)
    assert len(out) == 512 * 4
    assert struct.unpack_from("<QHH", out, 500) == (2049, 3, 0x820)
    with pytest.raises(ValueError, match="BIOS boot partition"):
        boot.patch_core_img(bytes(core), 2048, 2)


def test_grub_cfg_rauc_scheme():
    p = plan.make_plan(940, 1, 32, 32, seed="c")
    cfg = boot.grub_cfg(p, "ttyS0,115200")
    assert cfg.index("load_env") < cfg.index("for s in $ORDER") < cfg.index("save_env A_TRY B_TRY")
    assert '"$A_TRY" != 1' in cfg and '"$B_OK" = 1' in cfg
    for name, number in (("A", 3), ("B", 4)):
        assert f"set root=($bootdisk,gpt{number})" in cfg
        assert f"root=PARTUUID={p.slot(name.lower()).uuid} ro rauc.slot={name} " in cfg
    assert "console=ttyS0,115200" in cfg and "serial --unit=0 --speed=115200" in cfg
    # after a power cut /config is repaired, not left to an emergency shell
    assert cfg.count(" fsck.repair=yes ") == 2
    assert "serial" not in boot.grub_cfg(p, "").split("console=tty0")[0].replace("# ", "")


def test_rauc_system_conf_and_manifest():
    from image import bundle
    conf = bundle.system_conf("fwcluster-amd64")
    for line in ("compatible=fwcluster-amd64", "bootloader=grub", "grubenv=/boot/efi/grub/grubenv",
                 "path=/etc/rauc/keyring.pem", "[slot.rootfs.0]", "bootname=B",
                 "device=/dev/disk/by-partlabel/fwroot-b"):
        assert line in conf.splitlines()
    m = bundle.manifest("fwcluster-amd64", "0.2.0+b", "b", "development")
    assert "format=verity" in m and "signing=development" in m and "filename=root.ext4" in m
    with pytest.raises(bundle.SigningError, match="go together"):
        bundle.signing_from("k.pem", None, None, Path("/nonexistent"))


def test_serial_output_drops_forwarded_unit_lines():
    # The health unit writes to the console while a command runs (it broke
    # `systemctl is-active` parsing once); only the command's lines remain.
    from image.qemu import without_console_log
    text = "[   53.396461] fwctl[405]: fwcluster: ready: slot b is healthy\nactive\n[12.5] x\nactive"
    assert without_console_log(text).split("\n") == ["active", "[12.5] x", "active"]


# --- console access (root password policy) ------------------------------------

ROOT_LOGIN = ROOT / "overlays/base/usr/lib/fwcluster/root-login"
PASSWD_TOOL = ROOT / "overlays/base/usr/sbin/fwcluster-passwd"
SHADOW = "root:*:20000:0:99999:7:::\ndaemon:*:20000:0:99999:7:::\n"


def root_login(tmp_path, files: dict[str, str]) -> tuple[str, list[str]]:
    """Run the appliance's root-login on a /config holding files; returns
    its verdict and the resulting shadow lines."""
    cfg = tmp_path / "config"
    cfg.mkdir()
    for name, text in files.items():
        (cfg / name).write_text(text)
    (tmp_path / "shadow").write_text(SHADOW)
    out = tmp_path / "shadow.out"
    p = subprocess.run(["sh", str(ROOT_LOGIN), str(cfg), str(tmp_path / "shadow"), str(out)],
                       capture_output=True, text=True, check=True)
    return p.stdout.strip(), out.read_text().splitlines()


CONFIGURED = {"cluster.toml": "[cluster]\n", "node": "fw1\n"}


def test_unconfigured_member_allows_passwordless_console_setup(tmp_path):
    state, lines = root_login(tmp_path, {"node": "fw1\n"})
    assert state == "setup"
    assert lines == ["root::20000:0:99999:7:::", "daemon:*:20000:0:99999:7:::"]


def test_configured_member_without_password_is_locked(tmp_path):
    state, lines = root_login(tmp_path, CONFIGURED)
    assert state == "locked" and lines[0] == "root:*:20000:0:99999:7:::"


@pytest.mark.parametrize("text", ["hunter2hunter2\n", "\n", "$y$bad:colon\n", "$6$a b$c\n"])
def test_plain_or_malformed_root_password_locks(tmp_path, text):
    for files in ({"root-password": text}, {**CONFIGURED, "root-password": text}):
        state, lines = root_login(tmp_path, files)
        assert state == "invalid" and lines[0] == "root:*:20000:0:99999:7:::"
        shutil.rmtree(tmp_path / "config")


def test_root_password_hash_made_by_fwcluster_passwd_is_applied(tmp_path):
    from image.seed import root_password_hash
    h = root_password_hash("correct horse")
    assert h.startswith("$y$") and h != root_password_hash("correct horse")  # salted
    assert crypt(b"correct horse", h.encode()) == h and crypt(b"wrong horse", h.encode()) != h
    state, lines = root_login(tmp_path, {**CONFIGURED, "root-password": h + "\n"})
    assert state == "password"
    assert lines == [f"root:{h}:20000:0:99999:7:::", "daemon:*:20000:0:99999:7:::"]


def crypt(password: bytes, setting: bytes) -> str:
    lib = ctypes.CDLL("libcrypt.so.1")
    lib.crypt.restype, lib.crypt.argtypes = ctypes.c_char_p, [ctypes.c_char_p, ctypes.c_char_p]
    return lib.crypt(password, setting).decode()


def test_fwcluster_passwd_writes_config_file_and_refuses_short(tmp_path):
    run = [sys.executable, str(PASSWD_TOOL), "--stdin", "--config", str(tmp_path)]
    p = subprocess.run(run, input="short\n", capture_output=True, text=True)
    assert p.returncode != 0 and "at least 8 characters" in p.stderr
    assert not (tmp_path / "root-password").exists()
    p = subprocess.run(run, input="long enough\n", capture_output=True, text=True, check=True)
    f = tmp_path / "root-password"
    assert f.stat().st_mode & 0o777 == 0o600
    assert crypt(b"long enough", f.read_text().strip().encode()) == f.read_text().strip()
    assert str(f) in p.stdout


def test_profile_installs_bash_completion_support():
    assert "bash-completion" in profile.load(DEFAULT).packages


# --- the version in the image -------------------------------------------------------

DEBIAN_OS_RELEASE = ('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\n'
                     'VERSION_ID="13"\nVERSION="13 (trixie)"\nVERSION_CODENAME=trixie\nID=debian\n')


def test_os_release_names_the_fwcluster_version_and_build():
    from image import customize
    text = customize.os_release(DEBIAN_OS_RELEASE, "0.2.0", "20261206T000000Z-b9fe6b19da8f")
    f = customize._os_release_fields(text)
    assert f["VERSION_ID"] == f["IMAGE_VERSION"] == "0.2.0"
    assert f["BUILD_ID"] == "20261206T000000Z-b9fe6b19da8f"
    assert f["ID"] == f["IMAGE_ID"] == "fwcluster" and f["ID_LIKE"] == "debian"
    assert f["DEBIAN_VERSION_ID"] == "13" and f["VERSION_CODENAME"] == "trixie"
    assert f["PRETTY_NAME"] == "fwcluster 0.2.0 (Debian 13 trixie)"


def test_the_image_reads_the_version_the_builder_wrote(tmp_path):
    """fwcluster/_version.py as customize writes it is what version.current()
    returns on the appliance, where there is no git."""
    from image import customize
    pkg = tmp_path / "fwcluster"
    shutil.copytree(ROOT / "fwcluster", pkg, ignore=shutil.ignore_patterns("__pycache__", "_version.py"))
    shutil.copytree(ROOT / "syncd", tmp_path / "syncd", ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "_version.py").write_text(customize.version_module("0.2.0.post3+gabc", "B1"))
    out = subprocess.run([sys.executable, "-c", "from fwcluster import version; print(version.current())"],
                         cwd=tmp_path, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "0.2.0.post3+gabc", out.stderr


def test_pure_python_wheels_are_told_by_their_tags():
    """zxcvbn ships py2.py3-none-any: it is pure Python 3 as well."""
    from image.build import _pure_python3
    assert _pure_python3("pyroute2-0.9.7-py3-none-any.whl")
    assert _pure_python3("zxcvbn-4.5.0-py2.py3-none-any.whl")
    assert not _pure_python3("foo-1.0-cp313-cp313-manylinux_2_17_x86_64.whl")
    assert not _pure_python3("bar-1.0-py2-none-any.whl")


def test_a_capped_build_writes_its_cap_where_the_appliance_reads_it(tmp_path):
    """`make image PROTOCOLS=previous`: _version.py carries the cap, and
    fwcluster.version.speaks() on the appliance answers from it."""
    from image import customize
    pkg = tmp_path / "fwcluster"
    shutil.copytree(ROOT / "fwcluster", pkg, ignore=shutil.ignore_patterns("__pycache__", "_version.py"))
    shutil.copytree(ROOT / "syncd", tmp_path / "syncd", ignore=shutil.ignore_patterns("__pycache__"))
    from fwcluster.core import versions
    probe = "from fwcluster import version; print(version.protocol_cap(), *version.speaks('sync'))"
    for cap in ("previous", "current"):
        (pkg / "_version.py").write_text(customize.version_module("0.2.0+previous", "B1", cap))
        out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                             text=True, env={"PATH": "/usr/bin:/bin"})
        assert out.stdout.split() == [cap, *map(str, versions.speaks("sync", cap))], out.stderr


@pytest.mark.parametrize("version, cap, named", [
    ("0.2.0", "previous", "0.2.0+previous"),
    ("0.2.0.post3+g1b2c3d4e5f6a", "previous", "0.2.0.post3+g1b2c3d4e5f6a.previous"),
    ("0.0.0+gabc.dirty", "previous", "0.0.0+gabc.dirty.previous"),
    ("0.2.0", "current", "0.2.0"),
])
def test_a_capped_build_has_a_version_of_its_own(version, cap, named):
    from image.build import capped_version
    from image.release import release_problems
    assert capped_version(version, cap) == named
    if cap == "previous":  # never a release, whatever the tag
        assert any("is not a release" in p for p in release_problems(named, "production", ""))


def test_an_unknown_cap_fails_the_build_by_name():
    from image.build import BuildError, capped_version
    with pytest.raises(BuildError, match="unknown protocol cap 'older'"):
        capped_version("0.2.0", "older")


def test_capped_and_default_builds_are_cached_apart():
    from tests.image.conftest import CACHE, cache_entry
    assert cache_entry("k1") == CACHE / "k1"
    assert cache_entry("k1", "previous") != cache_entry("k1")
    assert cache_entry("k1", "previous").name.startswith("k1-")


def test_a_vm_timeout_names_the_consoles_last_lines_on_one_line():
    """A CI log often keeps only a failure's summary line: the console's
    end goes into it, without terminal escapes."""
    import threading
    from image.qemu import VM
    vm = VM.__new__(VM)
    vm.lock, vm.buf = threading.Lock(), bytearray(
        b"Booting\r\n\x1b[0;32m  OK  \x1b[0m] Started fwcluster-carpd.\r\n\r\nfw1 login: ")
    assert vm.console_tail() == "Booting | OK  ] Started fwcluster-carpd. | fw1 login:"
    assert vm.console_tail(chars=10) == "fw1 login:"
    vm.buf = bytearray()
    assert vm.console_tail() == "(nothing)"
