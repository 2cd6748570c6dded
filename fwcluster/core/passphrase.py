"""The cluster passphrase: the strength rule and a generator's alphabet.

Every advert on a vip segment is a MAC of a known message under a key made
from the passphrase, so anyone who captures one can guess offline. The rule
is about guessing cost, and the cost comes from zxcvbn (Dropbox's model:
dictionaries, names, keyboard walks, sequences, repeats, dates, l33t), not
from a hand-written count of character classes, which a structured
passphrase (`Password123!Password123!`) fools:

  * at least MIN_LENGTH bytes, and
  * at least 10^MIN_GUESSES_LOG10 guesses by zxcvbn's estimate, for the whole
    passphrase and, in compatible mode, for its first CARP_KEY_LEN bytes
    alone: CARP v2 keys its HMAC-SHA1 with those and ignores the rest.

zxcvbn counts an unstructured character as 10 guesses, whatever its real
alphabet, so a random 20-character passphrase scores 10^20 (its real cost
is 64^20) and the bar stays one that a random CARP key of 16 or more
characters clears.
"""
from __future__ import annotations

import string

import zxcvbn

MIN_LENGTH = 16
MIN_GUESSES_LOG10 = 16
CARP_KEY_LEN = 20  # CARP keys HMAC-SHA1 with the first 20 bytes
UCARP_MAX = 19     # ucarp refuses a longer --pass
# zxcvbn's matching grows faster than linearly with length; a prefix this
# long that passes is already far past the bar (a longer one adds to it).
ESTIMATE_MAX = 64
# Generated passphrases: URL-safe base64's alphabet (6 bits a character; no
# quotes, spaces or shell specials, so they survive copy and paste).
ALPHABET = string.ascii_letters + string.digits + "-_"
GENERATED_LENGTH = CARP_KEY_LEN  # 120 bits, all of them used by CARP


def guesses_log10(secret: bytes) -> float:
    """zxcvbn's estimate of the guesses secret takes (log10)."""
    text = secret[:ESTIMATE_MAX].decode("latin-1")
    return float(zxcvbn.zxcvbn(text)["guesses_log10"])


def weakness(secret: bytes, carp_key_only: bool = False) -> str | None:
    """Why the passphrase is too weak, or None if it passes the rule.
    carp_key_only: compatible mode, where CARP uses only the first
    CARP_KEY_LEN bytes, so they must pass on their own too."""
    if len(secret) < MIN_LENGTH:
        return f"passphrase is {len(secret)} characters; use at least {MIN_LENGTH}"
    parts = [("passphrase", secret)]
    if carp_key_only and len(secret) > CARP_KEY_LEN:
        parts.append((f"its first {CARP_KEY_LEN} bytes (all that compatible-mode CARP uses)",
                      secret[:CARP_KEY_LEN]))
    for what, part in parts:
        guesses = guesses_log10(part)
        if guesses < MIN_GUESSES_LOG10:
            return (f"{what} is too guessable (about 10^{guesses:.1f} guesses, need "
                    f"10^{MIN_GUESSES_LOG10}): words, names, sequences and repeats cost little")
    return None
