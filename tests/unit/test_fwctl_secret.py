"""fwctl secret: generated passphrases pass the rule the daemons apply; files are 0600 from birth."""
import os
import stat
import subprocess
import sys
from pathlib import Path

from fwcluster import configfile
from fwcluster.core import passphrase
from fwcluster.fwctl import secret

ROOT = Path(__file__).resolve().parents[2]


def test_generated_passphrases_pass_the_rule():
    for length in (16, 19, 20, 64):
        for _ in range(50):
            text = secret.make(length)
            assert len(text) == length and passphrase.weakness(text.encode(), carp_key_only=True) is None


def test_generate_writes_0600_and_the_daemons_accept_it(tmp_path):
    out = tmp_path / "secret"
    old = os.umask(0)  # a careless umask must not widen the file
    try:
        r = subprocess.run([sys.executable, "-m", "fwcluster.fwctl", "secret", "generate",
                            "--output", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=30)
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert len(configfile.read_secret("c.toml", str(out))) == passphrase.GENERATED_LENGTH
    again = subprocess.run([sys.executable, "-m", "fwcluster.fwctl", "secret", "generate",
                            "--output", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--force" in again.stderr
