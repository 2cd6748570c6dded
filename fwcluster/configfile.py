"""cluster.toml and the secret file from disk (the I/O half of
fwcluster.core.config, which parses and validates)."""
from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

from fwcluster.core.config import Config, ConfigError, parse


def load(path: str | os.PathLike, node: str | None = None) -> Config:
    """Read and validate a cluster.toml. Raises ConfigError."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file") from None
    except PermissionError:
        raise ConfigError(path, "", "permission denied") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    return parse(data, path, node)


def read_secret(config_path: str, secret_file: str) -> bytes:
    """The passphrase: first line of secret_file, which must not be world-readable."""
    key = "cluster.secret_file"
    try:
        st = os.stat(secret_file)
    except FileNotFoundError:
        raise ConfigError(config_path, key, f"secret file {secret_file} does not exist") from None
    except PermissionError:
        raise ConfigError(config_path, key, f"secret file {secret_file}: permission denied") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(config_path, key, f"secret file {secret_file} is not a regular file")
    if st.st_mode & stat.S_IROTH:
        raise ConfigError(config_path, key,
                          f"secret file {secret_file} is world-readable (mode {stat.S_IMODE(st.st_mode):04o}); "
                          f"run: chmod 600 {secret_file}")
    line = Path(secret_file).read_bytes().split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise ConfigError(config_path, key, f"secret file {secret_file} is empty")
    return line


def secret(cfg: Config) -> bytes:
    """The cluster passphrase named by cfg's cluster.secret_file."""
    return read_secret(cfg.path, cfg.secret_file)
