"""The cluster passphrase: the strength rule and a generator's alphabet.

The passphrase keys CARP's HMAC-SHA1 directly, and every advert on a vip
segment is an HMAC of a known message: anyone who captures one can guess
offline. So the rule is about guessing cost, kept simple enough to state in
one line of documentation:

  * at least MIN_LENGTH characters,
  * at least MIN_DISTINCT different characters,
  * at least MIN_BITS estimated bits: length x log2(size of the character
    classes it uses: 26 lower-case, 26 upper-case, 10 digits, 33 other).

The estimate flatters structured passphrases (a word list beats it), which is
why `fwctl secret generate` is the recommended source.
"""
from __future__ import annotations

import math
import string

MIN_LENGTH = 16
MIN_DISTINCT = 6
MIN_BITS = 80
CARP_KEY_LEN = 20  # CARP keys HMAC-SHA1 with the first 20 bytes
UCARP_MAX = 19     # ucarp refuses a longer --pass
# Generated passphrases: URL-safe base64's alphabet (6 bits a character; no
# quotes, spaces or shell specials, so they survive copy and paste).
ALPHABET = string.ascii_letters + string.digits + "-_"
GENERATED_LENGTH = CARP_KEY_LEN  # 120 bits, all of them used by CARP


def estimated_bits(secret: bytes) -> float:
    text = secret.decode("latin-1")
    pool = 0
    pool += 26 if any(c in string.ascii_lowercase for c in text) else 0
    pool += 26 if any(c in string.ascii_uppercase for c in text) else 0
    pool += 10 if any(c in string.digits for c in text) else 0
    pool += 33 if any(not c.isascii() or not c.isalnum() for c in text) else 0
    return len(text) * math.log2(pool) if pool else 0.0


def weakness(secret: bytes) -> str | None:
    """Why the passphrase is too weak, or None if it passes the rule."""
    if len(secret) < MIN_LENGTH:
        return f"passphrase is {len(secret)} characters; use at least {MIN_LENGTH}"
    if len(set(secret)) < MIN_DISTINCT:
        return f"passphrase uses {len(set(secret))} different characters; use at least {MIN_DISTINCT}"
    bits = estimated_bits(secret)
    if bits < MIN_BITS:
        return (f"passphrase is too guessable (about {bits:.0f} bits, need {MIN_BITS}): make it longer "
                "or mix upper case, lower case, digits and symbols")
    return None
