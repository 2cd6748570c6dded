"""cluster.toml and the secret file from disk (the I/O half of
fwcluster.core.config, which parses and validates).

Every failure is a ConfigError (file, key, reason on one line): a file that
is missing, a directory, not UTF-8, not TOML or nested past reason is bad
input like any other, never a traceback.
"""
from __future__ import annotations

import os
import stat
import tomllib

from fwcluster.core import passphrase
from fwcluster.core.config import Config, ConfigError, parse

MAX_CONFIG = 1 << 20  # bytes; a cluster.toml is a few KiB
MAX_SECRET = 4096


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
    """Read and validate a cluster.toml. Raises ConfigError."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG + 1)
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(path, "", "is a directory, not a file") from None
    except OSError as e:
        raise ConfigError(path, "", e.strerror or type(e).__name__) from None
    except ValueError as e:  # a NUL in the path
        raise ConfigError(path, "", str(e)) from None
    return parse_bytes(raw, path, node)


def read_secret(config_path: str, secret_file: str) -> bytes:
    """The passphrase: first line of secret_file.

    The file is opened once (the final name must not be a symlink; links in
    the directories, like the appliance's /etc/fwcluster -> /config, are
    resolved first) and its checks are made on the open descriptor, so what
    is checked is what is read."""
    key = "cluster.secret_file"

    def bad(reason: str) -> ConfigError:
        return ConfigError(config_path, key, f"secret file {secret_file} {reason}")

    if not os.path.isabs(secret_file):
        raise bad("is not an absolute path")
    real = os.path.realpath(secret_file)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise bad("does not exist") from None
    except PermissionError:
        raise bad("cannot be read: permission denied") from None
    except OSError as e:
        raise bad(f"cannot be read: {e.strerror}") from None
    except ValueError as e:
        raise bad(f"cannot be read: {e}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            raise bad("is not a regular file")
        if st.st_uid != os.geteuid():
            raise bad(f"is owned by uid {st.st_uid}, not by uid {os.geteuid()} that runs this; "
                      f"run: chown {os.geteuid()} {secret_file}")
        if mode & stat.S_IROTH:
            raise bad(f"is world-readable (mode {mode:04o}); run: chmod 600 {secret_file}")
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise bad(f"is writable by group or others (mode {mode:04o}); run: chmod 600 {secret_file}")
        head = f.read(MAX_SECRET)
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise bad("is empty")
    if b"\n" not in head and len(head) == MAX_SECRET:
        raise bad(f"has no line break in its first {MAX_SECRET} bytes")
    weak = passphrase.weakness(line)
    if weak:
        raise bad(f"holds a weak passphrase: {weak} (make one with: fwctl secret generate)")
    return line


def secret(cfg: Config) -> bytes:
    """The cluster passphrase named by cfg's cluster.secret_file."""
    return read_secret(cfg.path, cfg.secret_file)
