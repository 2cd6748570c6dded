"""cluster.toml and the secret file from disk (the I/O half of
fwcluster.core.config, which parses and validates).

Every failure is a ConfigError (file, key, reason on one line): a file that
is missing, a directory, a FIFO, not UTF-8, not TOML or nested past reason
is bad input like any other, never a traceback and never a blocked read.

What the daemons trust is what root could have written and no one else:
read_trusted() opens a file only if it is a regular file (opened
non-blocking, so a FIFO cannot stall the caller, and read up to a cap),
owned by root (or by the uid running this, for a development checkout) and
not writable by group or others, in a directory of the same kind. A symlink
is followed only when the link itself is such a file's sibling (the
appliance's /etc/fwcluster/secret -> /config/secret is a root-owned link on
the read-only root); the name finally opened is never a symlink (O_NOFOLLOW).
"""
from __future__ import annotations

import os
import stat
import tomllib

from fwcluster.core import passphrase
from fwcluster.core.config import Config, ConfigError, parse

MAX_CONFIG = 1 << 20  # bytes; a cluster.toml is a few KiB
MAX_SECRET = 4096
MAX_LINKS = 8  # symlink hops before a name is refused (a loop, or a maze)


class Untrusted(Exception):
    """Why a file may not be read: one phrase, no path (the caller has it)."""


def _owner_ok(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def _check_dir(directory: str) -> None:
    try:
        st = os.stat(directory)
    except OSError as e:
        raise Untrusted(f"its directory {directory} cannot be read: {e.strerror}") from None
    if not _owner_ok(st):
        raise Untrusted(f"its directory {directory} is owned by uid {st.st_uid}, not root")
    if stat.S_IMODE(st.st_mode) & (stat.S_IWGRP | stat.S_IWOTH):
        raise Untrusted(f"its directory {directory} is writable by group or others "
                        f"(mode {stat.S_IMODE(st.st_mode):04o})")


def _final_name(path: str) -> str:
    """path with its directories resolved and each symlink of its own name
    followed only from a trusted directory and link; the name returned is
    then opened without following links."""
    for _ in range(MAX_LINKS):
        directory = os.path.realpath(os.path.dirname(path) or ".")
        name = os.path.join(directory, os.path.basename(path))
        _check_dir(directory)
        try:
            st = os.lstat(name)
        except FileNotFoundError:
            raise Untrusted("does not exist") from None
        except OSError as e:
            raise Untrusted(f"cannot be read: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            raise Untrusted("is a directory, not a file")
        if stat.S_ISREG(st.st_mode):
            return name
        if not stat.S_ISLNK(st.st_mode):  # never opened: a FIFO or device could block
            raise Untrusted("is not a regular file")
        if not _owner_ok(st):
            raise Untrusted(f"is a symlink owned by uid {st.st_uid}, not root")
        path = os.path.join(directory, os.readlink(name))
    raise Untrusted(f"is a chain of more than {MAX_LINKS} symlinks")


def read_trusted(path: str, limit: int) -> tuple[bytes, os.stat_result]:
    """Up to limit + 1 bytes of a file root controls, and its fstat (the
    checks are made on the open descriptor: what is checked is what is
    read). Raises Untrusted with the reason."""
    if not os.path.isabs(path):
        path = os.path.abspath(path)
    try:
        name = _final_name(path)
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except Untrusted:
        raise
    except FileNotFoundError:
        raise Untrusted("does not exist") from None
    except PermissionError:
        raise Untrusted("cannot be read: permission denied") from None
    except OSError as e:
        raise Untrusted(f"cannot be read: {e.strerror}") from None
    except ValueError as e:  # a NUL in the path
        raise Untrusted(f"cannot be read: {e}") from None
    try:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            raise Untrusted("is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise Untrusted("is not a regular file")
        if not _owner_ok(st):
            raise Untrusted(f"is owned by uid {st.st_uid}, not root; run: chown root {path}")
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise Untrusted(f"is writable by group or others (mode {mode:04o}); "
                            f"run: chmod go-w {path}")
        chunks, left = [], limit + 1
        while left > 0:  # a regular file: reads return at once
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks), st
    except OSError as e:
        raise Untrusted(f"cannot be read: {e.strerror}") from None
    finally:
        os.close(fd)


def parse_bytes(raw: bytes, path: str, node: str | None = None) -> Config:
    """Validate cluster.toml's bytes (also used for a pushed, staged copy)."""
    if len(raw) > MAX_CONFIG:
        raise ConfigError(path, "", f"file is larger than {MAX_CONFIG} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, "", f"not UTF-8 (byte {e.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(path, "", "not valid TOML: nested too deeply") from None
    return parse(data, path, node)


def load(path: str | os.PathLike, node: str | None = None) -> Config:
    """Read and validate a cluster.toml. Raises ConfigError; never blocks
    (a FIFO is refused, not read)."""
    path = str(path)
    try:
        raw, _ = read_trusted(path, MAX_CONFIG)
    except Untrusted as e:
        raise ConfigError(path, "", str(e)) from None
    return parse_bytes(raw, path, node)


def read_secret(config_path: str, secret_file: str, mode: str = "hardened") -> bytes:
    """The passphrase: first line of secret_file, which must also not be
    readable by others. mode: the config's [carp] mode (in compatible mode
    CARP's key is the first 20 bytes alone, and they must be strong too)."""
    key = "cluster.secret_file"

    def bad(reason: str) -> ConfigError:
        return ConfigError(config_path, key, f"secret file {secret_file} {reason}")

    if not os.path.isabs(secret_file):
        raise bad("is not an absolute path")
    try:
        head, st = read_trusted(secret_file, MAX_SECRET - 1)
    except Untrusted as e:
        raise bad(str(e)) from None
    mode_bits = stat.S_IMODE(st.st_mode)
    if mode_bits & stat.S_IROTH:
        raise bad(f"is world-readable (mode {mode_bits:04o}); run: chmod 600 {secret_file}")
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise bad("is empty")
    if b"\n" not in head and len(head) == MAX_SECRET:
        raise bad(f"has no line break in its first {MAX_SECRET} bytes")
    weak = passphrase.weakness(line, carp_key_only=mode == "compatible")
    if weak:
        raise bad(f"holds a weak passphrase: {weak} (make one with: fwctl secret generate)")
    return line


def secret(cfg: Config) -> bytes:
    """The cluster passphrase named by cfg's cluster.secret_file."""
    return read_secret(cfg.path, cfg.secret_file, cfg.carp.mode)
