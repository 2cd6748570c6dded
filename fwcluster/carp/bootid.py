"""Boot ids of hardened CARP counters, and the codec carpd runs with.

A hardened advert's counter is boot id (high 32 bits) | sequence (low 32).
Peers accept a sender's counters only upwards, so a boot id must never be
used twice: each start takes max(last boot id + 1, the clock in seconds)
and makes it durable ({state_dir}/carp-boot: written, fsynced, renamed, the
directory fsynced) before the first advert that carries it. The file alone
makes ids grow while it survives; the clock alone while it never goes back
past the last start; only losing both at once (a wiped /config and a clock
reset) can repeat one, and then peers refuse the member's adverts as
`stale` until its ids pass the old ones (docs/carp.md, "Trust models").

The wire carries 32 bits. A persisted id the next one cannot follow (2^32 - 1
or more: an edited or corrupt file; the clock reaches it only in 2106) is not
pinned at the top, which would repeat it on every start: the member starts
afresh from the clock (or, past 2106, a random id), and says so.
"""
from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path

from fwcluster import version
from fwcluster.carp.core import hardened, modes
from fwcluster.core.config import Config

log = logging.getLogger("carpd")

BOOT_FILE = "carp-boot"


def allocate(state_dir: str, now: float | None = None) -> int:
    """The next boot id, persisted. If it cannot be persisted carpd carries
    on with the clock's guarantee alone (a warning says so)."""
    path = Path(state_dir) / BOOT_FILE
    last = 0
    try:
        last = int(path.read_text().split()[0])
    except FileNotFoundError:
        pass
    except (OSError, ValueError, IndexError) as e:
        log.warning("hardened CARP: %s unreadable (%s); boot id from the clock", path, e)
    clock = int(time.time() if now is None else now)
    if last >= hardened.BOOT_MAX:
        fresh = clock if 1 <= clock <= hardened.BOOT_MAX else 1 + secrets.randbelow(1 << 31)
        log.warning("hardened CARP: persisted boot id %d in %s leaves no higher id on the wire "
                    "(32 bits); starting afresh at %d: peers that saw a higher id drop this "
                    "member's adverts as stale until they restart", last, path, fresh)
        last = fresh - 1
    boot = max(last + 1, clock if clock <= hardened.BOOT_MAX else 0, 1)
    try:
        _write_durably(path, f"{boot}\n")
    except OSError as e:
        log.warning("hardened CARP: cannot persist boot id %d in %s (%s); only the clock "
                    "keeps the next start's ids higher", boot, path, e)
    return boot


def _write_durably(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def codec_for(cfg: Config) -> modes.Compatible | modes.Hardened:
    """The advert codec of cfg's [carp] mode (a boot id allocated if hardened)."""
    if cfg.carp.mode != "hardened":
        return modes.Compatible()
    boot = allocate(cfg.state_dir)
    log.info("hardened CARP adverts, boot id %d", boot)
    return modes.Hardened(cfg.name, hardened.Counter(boot, lambda: allocate(cfg.state_dir)),
                          speaks=version.speaks("carp_hardened"))
