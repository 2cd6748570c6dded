"""Config sync between members: an authenticated TCP channel on the sync link.

Every exchange is challenge-response so a recorded push cannot be replayed,
and every message is authenticated before any of it is parsed: the framing
(fwcluster.core.configwire) puts a MAC over the challenge, the nonce, a
direction label and the body's digest in a short fixed-format header line,
so at most configwire.MAX_HEADER unauthenticated bytes are read per message
and JSON is parsed only from authenticated bytes. The key is derived from
the cluster secret with HKDF under its own label, so it is never the CARP
or the state sync key. It listens on TCP at this member's sync_address and
the sync port. Before a connection authenticates it holds a slot of its own
budget (syncd/core/preauth.py: a cap per source, the oldest displaced by a
newcomer) for at most AUTH_TIMEOUT; after, one of MAX_CLIENTS.

Operations: hello (generation and digest), fetch (the current bundle) and
push (validate as this member, then install all-or-nothing).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from fwcluster import configstore, nft, version
from fwcluster.core import bundle
from fwcluster.core import configwire as wire
from fwcluster.configstore import Generation
from fwcluster.core.bundle import Bundle, BundleError
from syncd.core.keys import hkdf
from syncd.core.preauth import Slots

log = logging.getLogger("syncd.config")
TIMEOUT = 10.0
# To send an authentic request header after the greeting: a member sends it
# at once (one round trip on the sync link), so a silent connection is gone soon.
AUTH_TIMEOUT = 1.0
POLL_INTERVAL = 5.0
RETRY_NEWER = 60.0  # s: a peer that refused our newest version is asked in it again after
MAX_CLIENTS = 8  # concurrent authenticated connections; more are closed and counted
MAX_PENDING = 8  # unauthenticated ones; a newcomer displaces the oldest
MAX_PENDING_PER_SOURCE = 4
IP_FREEBIND, IPV6_FREEBIND = 15, 78  # linux/in.h, linux/in6.h


def config_key(secret: bytes, cluster: str) -> bytes:
    return hkdf(secret, b"fwcluster-syncd", b"config-hmac-v1 " + cluster.encode())


class AuthError(Exception):
    pass


async def _header(reader: asyncio.StreamReader) -> bytes:
    """One header line, at most MAX_HEADER bytes (the reader's limit)."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as e:
        raise wire.FrameError("malformed", "connection closed mid-header" if e.partial
                              else "connection closed") from None
    except asyncio.LimitOverrunError:
        raise wire.FrameError("oversize", f"header longer than {wire.MAX_HEADER} bytes") from None
    return line


class _NotSpoken(AuthError):
    """The peer closed the connection after our request, replying nothing:
    it may not speak that version (or not know our key)."""


async def call(host: str, port: int, key: bytes, node: str, op: str, body: dict,
               timeout: float = TIMEOUT, protos: tuple[int, ...] = (1,),
               release: dict | None = None) -> dict:
    """One authenticated request to a peer; raises OSError/AuthError/TimeoutError.
    protos: the protocol versions to ask in, newest first, each on a new
    connection when the peer closed the one before without a word (an FWCC1
    server does with an FWCC2 request). release: what an FWCC2 request says
    of us. The reply says in "config_protocol" which version carried it."""
    async def exchange(proto: int, last: bool):
        reader, writer = await asyncio.open_connection(host, port, limit=wire.MAX_HEADER)
        try:
            challenge = wire.parse_hello(await _header(reader))
            nonce = os.urandom(16)
            req = {"op": op, "from": node, "body": body}
            if proto >= 2:
                req["release"] = release or {}
            writer.write(wire.request(key, challenge, nonce, wire.canonical(req), proto))
            await writer.drain()
            try:
                line = await _header(reader)
            except (wire.FrameError, ConnectionError) as e:
                if not last and (isinstance(e, ConnectionError) or "closed" in str(e)):
                    raise _NotSpoken(f"FWCC{proto} refused") from None
                raise
            length, digest = wire.check_reply(key, challenge, nonce, line, proto)
            return {**wire.open_body(await reader.readexactly(length), digest),
                    "config_protocol": proto}
        except wire.FrameError as e:
            raise AuthError(f"peer closed the connection (authentication refused?)"
                            if "closed" in str(e) else str(e)) from None
        except asyncio.IncompleteReadError:
            raise AuthError("peer closed the connection mid-reply") from None
        finally:
            writer.close()

    async def newest_spoken():
        for i, proto in enumerate(protos):
            try:
                return await exchange(proto, i == len(protos) - 1)
            except _NotSpoken:
                continue
    return await asyncio.wait_for(newest_spoken(), timeout)


def _new_peer() -> dict:
    """What we know of a peer before it answered: nothing. config_protocol:
    the version our last exchange spoke; version: its release, when it
    says (FWCC2)."""
    return {"generation": None, "digest": None, "reachable": False, "last_seen": None,
            "error": None, "config_protocol": None, "version": None}


class ConfigService:
    """Serves and pulls config bundles for one member."""

    def __init__(self, cfg, node: str, secret: bytes):
        self.cfg, self.node = cfg, node
        self.key = config_key(secret, cfg.name)
        self.me = cfg.member(node)
        self.own = Generation.load(cfg.state_dir)
        self.speaks = version.speaks("config")  # a build capped to previous: FWCC1 only
        release = version.release()
        self.release = {"version": release["version"], "speaks": release["speaks"]}
        # peer -> time until which we ask it in an older version only (it
        # refused our newest): an FWCC1 member is not asked twice every poll
        self._older_until: dict[str, float] = {}
        self.peers: dict[str, dict] = {p.name: _new_peer() for p in cfg.peers(node)}
        self.counters = {"auth_drops": 0, "malformed": 0, "oversize": 0, "busy_drops": 0,
                         "preauth_displaced": 0, "pushes_received": 0, "pushes_refused": 0,
                         "catch_ups": 0}
        self._slots = Slots(MAX_PENDING, MAX_PENDING_PER_SOURCE, MAX_CLIENTS)
        self.server: asyncio.AbstractServer | None = None
        self.last_error: str | None = None
        self.last_catch_up: dict | None = None
        self._lock = asyncio.Lock()
        # Called (no arguments) after an install that changed files: the
        # daemons reload (syncd itself, carpd through its control socket).
        self.on_installed = None
        # Called (where, exception) on an unexpected error of one connection:
        # logged and counted, never the end of syncd (syncd/supervise.py).
        self.on_error = None

    def reconfigure(self, cfg, secret: bytes) -> None:
        """A reloaded config: new peers and key (the listening socket stays:
        the sync address did not change, syncd/reload.py checks it)."""
        self.cfg, self.key = cfg, config_key(secret, cfg.name)
        self.me = cfg.member(self.node)
        old = self.peers
        self.peers = {p.name: old.get(p.name) or _new_peer() for p in cfg.peers(self.node)}

    # --- serving ---------------------------------------------------------
    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, sock=self._listen_socket(),
                                                 limit=wire.MAX_HEADER)
        if not self.own.digest:
            try:
                self.own.digest = self.local_bundle().digest
            except BundleError:
                pass

    def _listen_socket(self) -> socket.socket:
        addr = self.me.sync_address
        fam = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Bind even before the sync address is configured (boot order, link flaps).
        s.setsockopt(socket.IPPROTO_IP if fam == socket.AF_INET else socket.IPPROTO_IPV6,
                     IP_FREEBIND if fam == socket.AF_INET else IPV6_FREEBIND, 1)
        s.bind((str(addr), self.cfg.sync.port))
        s.listen(16)
        s.setblocking(False)
        return s

    async def _client(self, reader, writer) -> None:
        peer = writer.get_extra_info("peername")
        for old in self._slots.arrive(writer, str(peer[0]) if peer else "?"):
            self.counters["preauth_displaced"] += 1
            old.transport.abort()
        challenge = os.urandom(16)
        try:
            writer.write(wire.hello(challenge))
            await writer.drain()
            line = await asyncio.wait_for(_header(reader), AUTH_TIMEOUT)
            key = self.key   # the reply goes under it, though a push may rekey us meanwhile
            proto, nonce, length, digest = wire.check_request(key, challenge, line, self.speaks)
            # Authenticated from here on: the peer knows the key.
            if not self._slots.authenticated(writer):
                self.counters["busy_drops"] += 1
                return
            req = wire.open_body(await asyncio.wait_for(reader.readexactly(length), TIMEOUT), digest)
            op, body, sender = req.get("op"), req.get("body"), req.get("from", "?")
            if not isinstance(op, str) or not isinstance(body, dict) or not isinstance(sender, str):
                raise wire.FrameError("malformed", "request needs op, from (strings) and body (object)")
            if proto >= 2:
                self._note_release(sender, wire.release_of(req), proto)
            reply = await self._serve(op, body, sender)
            if proto >= 2:
                reply = {**reply, "release": self.release}
            writer.write(wire.reply(key, challenge, nonce, wire.canonical(reply), proto))
            await writer.drain()
        except wire.FrameError as e:
            self.counters[e.reason] = self.counters.get(e.reason, 0) + 1
            if e.reason == "auth_drops":
                log.warning("config channel: %s from %s", e, writer.get_extra_info("peername"))
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            self.counters["malformed"] += 1
        except Exception as e:
            if self.on_error is None:
                raise
            self.on_error("config channel connection", e)
        finally:
            self._slots.leave(writer)
            writer.close()

    async def _serve(self, op: str, body: dict, sender: str) -> dict:
        if op == "hello":
            self._note_peer(sender, body)
            return self.summary()
        if op == "fetch":
            try:
                return {"ok": True, "bundle": self.local_bundle().to_json()}
            except BundleError as e:
                return {"ok": False, "error": str(e)}
        if op == "push":
            self.counters["pushes_received"] += 1
            result = await self.install(body.get("bundle", {}))
            if not result["ok"]:
                self.counters["pushes_refused"] += 1
            else:  # the pusher installed it before sending
                self._note_peer(sender, {"generation": result["generation"], "digest": result["digest"]})
            return result
        return {"ok": False, "error": f"unknown operation {op!r}"}

    def _note_peer(self, name: str, summary: dict) -> None:
        if name in self.peers and isinstance(summary, dict) and "generation" in summary:
            self.peers[name].update(generation=summary.get("generation"), digest=summary.get("digest"),
                                    reachable=True, last_seen=time.time(), error=None)

    # --- local state -----------------------------------------------------
    def summary(self) -> dict:
        return {"ok": True, "node": self.node, "generation": self.own.generation,
                "digest": self.own.digest}

    def local_bundle(self) -> Bundle:
        return configstore.collect(self.cfg, generation=self.own.generation, origin=self.own.origin)

    async def install(self, obj: dict) -> dict:
        async with self._lock:
            try:
                b = Bundle.from_json(obj)
                if b.generation < self.own.generation:
                    raise BundleError(f"generation {b.generation} is older than the installed "
                                      f"{self.own.generation}")
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(None, self._install_sync, b)
            except BundleError as e:
                log.warning("config bundle refused: %s", e)
                return {"ok": False, "error": str(e)}
            except Exception as e:  # nft apply failure and the like: files were restored
                log.warning("config bundle not applied: %s", e)
                return {"ok": False, "error": f"{type(e).__name__}: {e}"}
            self.own = Generation(b.generation, b.digest, b.origin, time.time())
            self.own.save(self.cfg.state_dir)
            log.info("config generation %d from %s installed (changed: %s)", b.generation,
                     b.origin or "?", ", ".join(result["changed"]) or "nothing")
            if result["changed"] and self.on_installed is not None:
                await self.on_installed()
            return {"ok": True, **result}

    def _install_sync(self, b: Bundle) -> dict:
        # The bundle's own bytes, not the files on disk: what staging checked
        # is what is applied, and no file of this member can be pulled in.
        def check(cfg, node):
            nft.check(nft.render(cfg, node, files=b.files))

        def apply(cfg, node):
            nft.apply(nft.render(cfg, node, files=b.files), run_dir=self.cfg.run_dir)
        return configstore.install(b, self.cfg.path, self.node, self.cfg.secret_file,
                                  check_ruleset=check, apply_ruleset=apply)

    # --- talking to peers ------------------------------------------------
    async def _call_peer(self, member, op: str, body: dict, key: bytes | None = None) -> dict:
        """A request to member in the newest version both speak (ours
        newest first; the older only for RETRY_NEWER once it refused ours)."""
        protos = tuple(range(self.speaks[1], self.speaks[0] - 1, -1))  # newest first
        older = len(protos) > 1 and time.monotonic() < self._older_until.get(member.name, 0)
        reply = await call(str(member.sync_address), self.cfg.sync.port, key or self.key,
                           self.node, op, body, protos=protos[1:] if older else protos,
                           release=self.release)
        if reply["config_protocol"] < self.speaks[1] and not older:
            self._older_until[member.name] = time.monotonic() + RETRY_NEWER
        self._note_release(member.name, wire.release_of(reply), reply["config_protocol"])
        return reply

    def _note_release(self, name: str, release: dict | None, proto: int) -> None:
        """What a peer said of its release, and the config protocol it spoke."""
        if name in self.peers:
            self.peers[name].update(config_protocol=proto,
                                    version=(release or {}).get("version"))

    async def poll_once(self) -> None:
        """Hello every peer; catch up from the newest if we are behind."""
        async def hello(m):
            try:
                self._note_peer(m.name, await self._call_peer(m, "hello", self.summary()))
            except (OSError, AuthError, asyncio.TimeoutError, ValueError) as e:
                self.peers[m.name].update(reachable=False, error=str(e) or type(e).__name__)
        await asyncio.gather(*(hello(m) for m in self.cfg.peers(self.node)))
        behind = bundle.stale(self.own.generation, {n: p for n, p in self.peers.items() if p["reachable"]})
        if behind:
            newest = max(behind, key=lambda n: self.peers[n]["generation"])
            await self.catch_up(newest)

    async def catch_up(self, peer_name: str) -> None:
        try:
            reply = await self._call_peer(self.cfg.member(peer_name), "fetch", {})
        except (OSError, AuthError, asyncio.TimeoutError, ValueError) as e:
            self.last_error = f"catch-up from {peer_name}: {e}"
            return
        if not reply.get("ok"):
            self.last_error = f"catch-up from {peer_name}: {reply.get('error')}"
            return
        before = self.own.generation
        result = await self.install(reply["bundle"])
        if result["ok"]:
            self.counters["catch_ups"] += 1
            self.last_error = None
            self.last_catch_up = {"from": peer_name, "was": before, "now": self.own.generation,
                                  "time": time.time()}
            log.warning("config was stale (generation %d): caught up to %d from %s",
                        before, self.own.generation, peer_name)
        else:
            self.last_error = f"catch-up from {peer_name} refused: {result['error']}"

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception as e:  # keep serving; the next poll may succeed
                log.exception("config poll failed")
                self.last_error = f"poll: {type(e).__name__}: {e}"
            await asyncio.sleep(POLL_INTERVAL)

    async def push(self, names: list[str]) -> dict:
        """Push our files to every peer: validate + install locally first."""
        try:
            newest = max([self.own.generation] + [p["generation"] or 0 for p in self.peers.values()])
            b = configstore.collect(self.cfg, names, generation=newest + 1, origin=self.node)
        except BundleError as e:
            return {"ok": False, "error": str(e), "results": {}}
        # The peers hold the key in force now; installing here may rekey us
        # (a new secret or cluster name) before they have the bundle.
        key, peers = self.key, self.cfg.peers(self.node)
        local = await self.install(b.to_json())
        if not local["ok"]:
            return {"ok": False, "error": f"refused locally: {local['error']}", "results": {self.node: local}}
        if not local["changed"] and self.on_installed is not None:
            await self.on_installed()   # files edited in place: the daemons take them now too
        results = {self.node: local}

        async def one(m):
            try:
                r = await self._call_peer(m, "push", {"bundle": b.to_json()}, key)
            except (OSError, AuthError, asyncio.TimeoutError, ValueError) as e:
                r = {"ok": False, "error": f"unreachable: {str(e) or type(e).__name__}", "stale": True}
            if r.get("ok") and m.name in self.peers:
                self.peers[m.name].update(generation=b.generation, digest=b.digest, reachable=True,
                                          last_seen=time.time(), error=None)
            results[m.name] = r
        await asyncio.gather(*(one(m) for m in peers))
        return {"ok": all(r.get("ok") for r in results.values()), "generation": b.generation,
                "digest": b.digest, "results": results}

    async def fetch_all(self) -> dict:
        out = {}
        for m in self.cfg.peers(self.node):
            try:
                out[m.name] = await self._call_peer(m, "fetch", {})
            except (OSError, AuthError, asyncio.TimeoutError, ValueError) as e:
                out[m.name] = {"ok": False, "error": f"unreachable: {str(e) or type(e).__name__}"}
        return out

    def status(self) -> dict:
        reachable = {n: p for n, p in self.peers.items() if p["reachable"]}
        behind_me = sorted(n for n, p in reachable.items()
                           if p["generation"] is not None and p["generation"] < self.own.generation)
        return {"generation": self.own.generation, "digest": self.own.digest,
                "origin": self.own.origin, "stale": bool(bundle.stale(self.own.generation, reachable)),
                "newer_on": bundle.stale(self.own.generation, reachable), "peers_behind": behind_me,
                "peers": self.peers, "last_error": self.last_error,
                "last_catch_up": self.last_catch_up, "counters": self.counters}

    async def handle_control(self, req: dict) -> dict | None:
        """syncd control commands of config sync; None if not ours."""
        cmd = req.get("cmd")
        if cmd == "config-status":
            return {"ok": True, **self.status()}
        if cmd == "config-push":
            return await self.push(list(req.get("files", [])))
        if cmd == "config-fetch":
            try:
                local = self.local_bundle().to_json()
            except BundleError as e:
                return {"ok": False, "error": str(e)}
            return {"ok": True, "local": local, "peers": await self.fetch_all()}
        if cmd == "config-poll":
            await self.poll_once()
            return {"ok": True, **self.status()}
        return None
