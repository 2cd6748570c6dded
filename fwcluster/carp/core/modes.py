"""The two ways carpd signs and checks adverts, behind one interface (pure).

carpd's shell holds one codec for the member and asks it for each vhid's
Auth, for the bytes of an advert and for the verdict on a received packet;
it never needs to know which mode runs. `[carp] mode` picks the codec:

* Compatible: CARP v2 as ucarp and OpenBSD speak it (wire.py).
* Hardened: hardened.py; holds the member's Counter, its peers' replay
  windows and the solicitations in flight, so all outlive a re-key. decode
  may also say `unproven` (the shell then asks solicit() for a packet to
  send the sender) or hand back a Solicit (the shell asks prove() for the
  answer, if the vhid's machine has an advert to give). It sends each
  vhid's adverts at hardened.send_version of what it heard there, and
  probe() gives the v5 solicitation to send a sender heard at version 4.
"""
from __future__ import annotations

import ipaddress
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

    def probe(self, auth, sender: str, source: str | None, now: float) -> None:
        return None

    def version(self, vhid: int) -> None:
        return None  # not negotiated: ucarp's wire

    def tell(self, member: str, newest: int | None) -> bool:
        return False  # nothing to choose

    def told(self) -> dict[str, int]:
        return {}

    def keep_told(self, members) -> None:
        pass


class Hardened:
    mode = "hardened"
    binds_source = True  # the MAC covers the source: we must know the one we send from

    def __init__(self, cluster: str, counter: hardened.Counter,
                 windows: hardened.ReplayWindows | None = None,
                 challenges: hardened.Challenges | None = None,
                 nonce: Callable[[], int] | None = None,
                 speaks: tuple[int, int] = hardened.SPEAKS, heard: hardened.Heard | None = None):
        """nonce() gives an unpredictable 64-bit number (default: the
        system's random source; tests pass a seeded one). speaks: the
        hardened versions this build speaks (a capped one only 4)."""
        self.cluster = cluster
        self.speaks = speaks
        self.heard = heard or hardened.Heard()
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
            Hardened(cluster, self.counter, self.windows, self.challenges, self.nonce,
                     self.speaks, self.heard)

    def encode(self, auth: hardened.Auth, advbase: int, advskew: int, demote: int,
               source: str | None) -> bytes | None:
        """None without a source address: no peer could check the advert."""
        if not source:
            return None
        return hardened.encode(auth, self.counter.next(), source, advbase, advskew, demote,
                               version=self.version(auth.vhid))

    def decode(self, payload: bytes, ttl: int, source: str, auths: Mapping,
               own: str | None) -> Advert | Drop | hardened.Solicit:
        return hardened.decode(payload, ttl, source, auths, self.windows, own, self.challenges,
                               self.speaks, self.heard)

    def version(self, vhid: int) -> int:
        """The hardened version vhid's adverts go out at now."""
        return hardened.send_version(self.speaks, self.heard.speaking(vhid))

    def tell(self, member: str, newest: int | None) -> bool:
        """syncd heard `member` speaks hardened CARP up to `newest`
        (Heard.tell); True when that changed what we knew."""
        return self.heard.tell(member, newest)

    def told(self) -> dict[str, int]:
        return self.heard.told()

    def keep_told(self, members) -> None:
        self.heard.keep_told(members)

    def peer_versions(self, vhid: int) -> dict[str, int]:
        """The version each sender heard on vhid spoke last, by address."""
        return {str(ipaddress.ip_address(src)): v for src, v in self.heard.versions(vhid).items()}

    def probe(self, auth: hardened.Auth, sender: str, source: str | None,
              now: float) -> bytes | None:
        """The v5 solicitation that tells `sender`, heard at an older
        version, that we speak newer (an upgraded member that fell back
        climbs again when all it heard do); None when not due."""
        key = (hardened._packed(sender), auth.vhid)
        if not source or key[0] is None or not self.heard.probe(key, self.speaks, now):
            return None
        nonce = self.nonce()
        self.challenges.ask(key, nonce, now)  # a proof may come back: it opens no window early
        return hardened.encode_solicit(auth, nonce, source)

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
        that asker within CHALLENGE_GAP, or the vhid is at version 4
        (which has no proof: the asker hears our v4 adverts)."""
        key = (hardened._packed(asker), auth.vhid)
        if self.version(auth.vhid) < 5:
            return None
        if not source or key[0] is None or not self.challenges.answer(key, now):
            return None
        return hardened.encode(auth, self.counter.next(), source, advert.advbase,
                               advert.advskew, advert.demote, echo=asked.nonce)


_SYSRANDOM = random.SystemRandom()
