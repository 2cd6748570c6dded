"""The two ways carpd signs and checks adverts, behind one interface (pure).

carpd's shell holds one codec for the member and asks it for each vhid's
Auth, for the bytes of an advert and for the verdict on a received packet;
it never needs to know which mode runs. `[carp] mode` picks the codec:

* Compatible: CARP v2 as ucarp and OpenBSD speak it (wire.py).
* Hardened: hardened.py; holds the member's Counter, its peers' replay
  windows and the solicitations in flight, so all outlive a re-key. decode
  may also say `unproven` (the shell then asks solicit() for a packet to
  send the sender) or hand back a Solicit (the shell asks prove() for the
  answer, if the vhid's machine has an advert to give).
"""
from __future__ import annotations

import random
from typing import Callable, Iterable, Mapping

from fwcluster.carp.core import hardened, wire
from fwcluster.carp.core.wire import Advert, Drop


class Compatible:
    mode = "compatible"
    binds_source = False  # any source address will do (the kernel may pick one)

    def auth(self, secret: bytes, vhid: int, addresses: Iterable, cookie: int) -> wire.Auth:
        return wire.Auth(secret, vhid, addresses, cookie)

    def renamed(self, cluster: str) -> "Compatible":
        return self  # v2's key is the secret itself: the name is not in it

    def encode(self, auth: wire.Auth, advbase: int, advskew: int, demote: int,
               source: str | None) -> bytes | None:
        return wire.encode(auth, advbase, advskew, demote)

    def decode(self, payload: bytes, ttl: int, source: str, auths: Mapping,
               own: str | None) -> Advert | Drop:
        return wire.decode(payload, ttl, auths)

    def solicit(self, auth, sender: str, source: str | None, now: float) -> None:
        return None  # v2 has no proof of liveness to ask for

    def prove(self, auth, advert, source: str | None, asked: hardened.Solicit, asker: str,
              now: float) -> None:
        return None


class Hardened:
    mode = "hardened"
    binds_source = True  # the MAC covers the source: we must know the one we send from

    def __init__(self, cluster: str, counter: hardened.Counter,
                 windows: hardened.ReplayWindows | None = None,
                 challenges: hardened.Challenges | None = None,
                 nonce: Callable[[], int] | None = None):
        """nonce() gives an unpredictable 64-bit number (default: the
        system's random source; tests pass a seeded one)."""
        self.cluster = cluster
        self.counter = counter
        self.windows = windows or hardened.ReplayWindows()
        self.challenges = challenges or hardened.Challenges()
        self.nonce = nonce or (lambda: _SYSRANDOM.getrandbits(64))
        self._keys: dict[bytes, bytes] = {}  # secret -> derived key (HKDF once)

    def auth(self, secret: bytes, vhid: int, addresses: Iterable, cookie: int) -> hardened.Auth:
        k = self._keys.get(secret)
        if k is None:
            k = self._keys[secret] = hardened.key(secret, self.cluster)
        return hardened.Auth(k, vhid, addresses, cookie)

    def renamed(self, cluster: str) -> "Hardened":
        """The codec of the cluster under a new name (its key derives from
        the name); the counter and the peers' replay windows carry over."""
        return self if cluster == self.cluster else \
            Hardened(cluster, self.counter, self.windows, self.challenges, self.nonce)

    def encode(self, auth: hardened.Auth, advbase: int, advskew: int, demote: int,
               source: str | None) -> bytes | None:
        """None without a source address: no peer could check the advert."""
        if not source:
            return None
        return hardened.encode(auth, self.counter.next(), source, advbase, advskew, demote)

    def decode(self, payload: bytes, ttl: int, source: str, auths: Mapping,
               own: str | None) -> Advert | Drop | hardened.Solicit:
        return hardened.decode(payload, ttl, source, auths, self.windows, own, self.challenges)

    def solicit(self, auth: hardened.Auth, sender: str, source: str | None,
                now: float) -> bytes | None:
        """The solicitation to send `sender` (its advert was `unproven`), or
        None: we asked it within CHALLENGE_GAP, or have no source to sign with."""
        key = (hardened._packed(sender), auth.vhid)
        if not source or key[0] is None:
            return None
        nonce = self.nonce()
        if not self.challenges.ask(key, nonce, now):
            return None
        return hardened.encode_solicit(auth, nonce, source)

    def prove(self, auth: hardened.Auth, advert, source: str | None, asked: hardened.Solicit,
              asker: str, now: float) -> bytes | None:
        """The proof answering `asked` from `asker`: `advert` (the machine's
        SendAdvert, its current one) echoing the nonce; None if we answered
        that asker within CHALLENGE_GAP."""
        key = (hardened._packed(asker), auth.vhid)
        if not source or key[0] is None or not self.challenges.answer(key, now):
            return None
        return hardened.encode(auth, self.counter.next(), source, advert.advbase,
                               advert.advskew, advert.demote, echo=asked.nonce)


_SYSRANDOM = random.SystemRandom()
