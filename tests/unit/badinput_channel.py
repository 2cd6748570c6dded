"""Bad input for the config channel, over real TCP to a real ConfigService.

Run by tests/unit/test_bad_input.py inside a fresh network namespace
(`unshare -n`: its own loopback, gone when this process exits). Prints one
JSON object: the cases with what happened, the service's counters, and
whether its files and generation are what they were.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fwcluster import configfile  # noqa: E402
from fwcluster.core import configwire as wire  # noqa: E402
from syncd import configchannel  # noqa: E402
from syncd.configchannel import ConfigService, call  # noqa: E402

SECRET = "Unit-test-passphrase-4wYq"
HOST, PORT = "127.0.0.1", 3780


def site(d: Path):
    (d / "secret").write_text(SECRET + "\n")
    os.chmod(d / "secret", 0o600)
    text = (ROOT / "docs/examples/cluster.toml").read_text() \
        .replace("/etc/fwcluster/secret", str(d / "secret")) \
        .replace("/etc/fwcluster/ruleset.nft.j2", str(d / "ruleset.nft.j2")) \
        .replace("203.0.113.1", "127.0.0.1").replace("203.0.113.2", "127.0.0.2") \
        .replace("[cluster]", f'[cluster]\nstate_dir = "{d}/state"\nrun_dir = "{d}/run"')
    (d / "cluster.toml").write_text(text)
    (d / "ruleset.nft.j2").write_text("table inet fw { }\n")
    return configfile.load(d / "cluster.toml", "fw1")


async def raw(data: bytes | list[bytes], read=True, pause=0.0) -> bytes:
    """Send raw bytes after the greeting; what came back (up to 64 KiB)."""
    r, w = await asyncio.open_connection(HOST, PORT)
    try:
        await r.readline()
        for piece in data if isinstance(data, list) else [data]:
            w.write(piece)
            await w.drain()
            if pause:
                await asyncio.sleep(pause)
        if not read:
            return b""
        return await asyncio.wait_for(r.read(65536), 5)
    except (ConnectionError, asyncio.TimeoutError):
        return b""
    finally:
        w.close()


async def authed(key: bytes, body: bytes, *, length: int | None = None, digest: bytes | None = None,
                 send: bytes | None = None) -> tuple[bytes, dict | None]:
    """A request with a correct MAC over whatever length/digest we claim."""
    r, w = await asyncio.open_connection(HOST, PORT)
    try:
        challenge = wire.parse_hello(await r.readline())
        nonce = os.urandom(16)
        n = len(body) if length is None else length
        dg = hashlib.sha256(body).digest() if digest is None else digest
        mac = wire._mac(key, wire._LABEL_REQUEST, challenge, nonce, n, dg)
        w.write(b"FWCC1 req %s %d %s %s\n" % (nonce.hex().encode(), n, dg.hex().encode(), mac))
        w.write(body if send is None else send)
        await w.drain()
        if send is not None and len(send) < n:
            w.write_eof()
        line = await asyncio.wait_for(r.readline(), 10)
        if not line:
            return b"", None
        length_, dg_ = wire.check_reply(key, challenge, nonce, line)
        return line, wire.open_body(await r.readexactly(length_), dg_)
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        return b"", None
    finally:
        w.close()


def req(op, body, sender="fw2") -> bytes:
    return wire.canonical({"op": op, "from": sender, "body": body})


def bundle_json(files: dict[str, bytes], config_name="cluster.toml", generation=1) -> dict:
    return {"files": {n: base64.b64encode(d).decode() for n, d in files.items()},
            "config_name": config_name, "generation": generation}


async def main() -> dict:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    configchannel.AUTH_TIMEOUT = 0.5  # the slow-client cases, quickly
    d = Path(tempfile.mkdtemp(prefix="fwbad-"))
    cfg = site(d)
    svc = ConfigService(cfg, "fw1", SECRET.encode())
    await svc.start()
    key = svc.key
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    good = {n: (d / n).read_bytes() for n in ("cluster.toml", "ruleset.nft.j2")}
    cases = []

    async def case(name, coro, expect_counter=None, expect_error=None, expect_ok=False):
        c0 = dict(svc.counters)
        t0 = time.monotonic()
        try:
            out = await coro
        except Exception as e:  # the client side may fail; the server is what is judged
            out = (b"", {"client": f"{type(e).__name__}: {e}"})
        delta = {k: v - c0.get(k, 0) for k, v in svc.counters.items() if v != c0.get(k, 0)}
        # Still serving: an honest hello right after.
        try:
            alive = (await call(HOST, PORT, key, "fw2", "hello", {}, timeout=5)).get("ok") is True
        except (OSError, configchannel.AuthError, asyncio.TimeoutError):
            alive = False
        reply = out[1] if isinstance(out, tuple) else None
        handled = alive
        if expect_counter:
            handled = handled and delta.get(expect_counter, 0) >= 1
        if expect_ok:
            handled = handled and isinstance(reply, dict) and reply.get("ok") is True
        if expect_error:
            handled = handled and isinstance(reply, dict) and reply.get("ok") is False \
                and expect_error in str(reply.get("error")) and "\n" not in str(reply.get("error"))
        cases.append({"class": "config channel", "case": name, "handled": handled, "counters": delta,
                      "reply": None if reply is None else str(reply)[:160],
                      "seconds": round(time.monotonic() - t0, 3)})

    big = b"A" * (10 << 20)
    await case("close at once", raw(b"", read=False))
    await case("garbage line", raw(b"hello\n"), "malformed")
    await case("old JSON request", raw(b'{"op":"hello","from":"fw2","nonce":"00","body":{},"mac":"x"}\n'),
               "malformed")
    await case("300 bytes, no newline", raw(b"F" * 300), "oversize")
    await case("10 MiB, no newline", raw(big), "oversize")
    await case("10 MiB line", raw(big + b"\n"), "oversize")
    await case("header, wrong MAC", raw(b"FWCC1 req " + b"0" * 32 + b" 2 " + b"a" * 64 + b" " + b"b" * 64
                                         + b"\n{}"), "auth_drops")
    await case("huge length, wrong MAC", raw(b"FWCC1 req " + b"0" * 32 + b" 999999999 " + b"a" * 64 + b" "
                                              + b"b" * 64 + b"\n"), "auth_drops")
    await case("upper-case hex", raw(b"FWCC1 req " + b"A" * 32 + b" 2 " + b"a" * 64 + b" " + b"b" * 64
                                      + b"\n"), "malformed")
    await case("short nonce", raw(b"FWCC1 req " + b"0" * 30 + b" 2 " + b"a" * 64 + b" " + b"b" * 64
                                   + b"\n"), "malformed")
    await case("non-UTF-8 header", raw(b"FWCC1 req \xff\xfe\n"), "malformed")
    await case("NUL in header", raw(b"FWCC1\0req\n"), "malformed")
    await case("empty line", raw(b"\n"), "malformed")
    await case("reply header as request", raw(b"FWCC1 rep 2 " + b"a" * 64 + b" " + b"b" * 64 + b"\n{}"),
               "malformed")
    await case("slow client (no header)", raw([b"FWCC1 req "], pause=1.0), "malformed")
    await case("wrong key", call(HOST, PORT, b"k" * 32, "fw2", "hello", {}), "auth_drops")
    await case("wrong key, push", call(HOST, PORT, b"k" * 32, "fw2", "push",
                                       {"bundle": bundle_json(dict(good, secret=b"x"))}), "auth_drops")

    # Reflection: a reply's MAC (other label) placed in a request header.
    async def reflected():
        r, w = await asyncio.open_connection(HOST, PORT)
        try:
            challenge = wire.parse_hello(await r.readline())
            nonce, body = os.urandom(16), req("hello", {})
            dg = hashlib.sha256(body).digest()
            mac = wire._mac(key, wire._LABEL_REPLY, nonce, challenge, len(body), dg)
            w.write(b"FWCC1 req %s %d %s %s\n" % (nonce.hex().encode(), len(body), dg.hex().encode(), mac)
                    + body)
            await w.drain()
            return await asyncio.wait_for(r.read(100), 5), None
        finally:
            w.close()
    await case("reply MAC reflected as request", reflected(), "auth_drops")

    # Replay: a request recorded on one connection, sent on the next.
    async def replayed():
        r, w = await asyncio.open_connection(HOST, PORT)
        challenge = wire.parse_hello(await r.readline())
        recorded = wire.request(key, challenge, os.urandom(16), req("hello", {}))
        w.close()
        return await raw(recorded), None
    await case("replayed request", replayed(), "auth_drops")

    # Authenticated but bad bodies: parsed only now, and safely.
    await case("length over the cap (MACed)", authed(key, b"{}", length=wire.MAX_BODY + 1), "oversize")
    await case("body shorter than promised", authed(key, b"{}" * 10, send=b"{}"), "malformed")
    await case("body altered after MAC", authed(key, req("hello", {}), send=req("hello", {"x": 1})[:
                                                 len(req("hello", {}))]), "auth_drops")
    await case("deeply nested JSON", authed(key, b"[" * 200000 + b"]" * 200000), "malformed")
    await case("deeply nested object", authed(key, b'{"a":' * 100000 + b"1" + b"}" * 100000), "malformed")
    await case("body not JSON", authed(key, b"not json"), "malformed")
    await case("body not UTF-8", authed(key, b'{"op":"\xff"}'), "malformed")
    await case("body a JSON array", authed(key, b"[1,2]"), "malformed")
    await case("no op", authed(key, wire.canonical({"from": "fw2", "body": {}})), "malformed")
    await case("op not a string", authed(key, wire.canonical({"op": 1, "from": "fw2", "body": {}})),
               "malformed")
    await case("body not an object", authed(key, wire.canonical({"op": "hello", "from": "fw2", "body": []})),
               "malformed")
    await case("from not a string", authed(key, wire.canonical({"op": "hello", "from": [], "body": {}})),
               "malformed")
    await case("unknown op", authed(key, req("rm -rf", {})), expect_error="unknown operation")
    await case("hello from a stranger with %s", authed(key, req("hello", {"generation": 99}, "%s%n")))

    def push(bundle, expect):
        return case(f"push: {expect}", authed(key, req("push", {"bundle": bundle})),
                    "pushes_refused", expect)
    await push("not a dict", "malformed bundle")
    await push({}, "malformed bundle")
    await push({"files": [], "config_name": "cluster.toml"}, "malformed bundle")
    await push({"files": {"cluster.toml": "***"}, "config_name": "cluster.toml"}, "malformed bundle")
    await push({"files": {"cluster.toml": 5}, "config_name": "cluster.toml"}, "malformed bundle")
    await push(dict(bundle_json(good), generation="9" * 5000), "malformed bundle")
    await push(bundle_json(good, generation=-1), "older than")
    await push(bundle_json(dict(good, secret=b"Attacker-passphrase-0000\n")), "member-local")
    await push(bundle_json(dict(good, node=b"fw2\n")), "member-local")
    await push(bundle_json(dict(good, **{"root-password": b"$y$x\n"})), "member-local")
    await push(bundle_json(dict(good, hostname=b"x\n")), "member-local")
    await push(bundle_json({"../cluster.toml": good["cluster.toml"], **good}), "not allowed")
    await push(bundle_json({".ssh": b"x", **good}), "not allowed")
    await push(bundle_json({"a/b": b"x", **good}), "not allowed")
    await push(bundle_json({"evil.toml": good["cluster.toml"]}, "evil.toml"), "this member's is")
    await push(bundle_json({"ruleset.nft.j2": good["ruleset.nft.j2"]}), "has no cluster.toml")
    await push(bundle_json(dict(good, **{"cluster.toml": b"\xff\xfe"})), "not UTF-8")
    await push(bundle_json(dict(good, **{"cluster.toml": b"a = " + b"[" * 50000 + b"]" * 50000})),
               "nested too deeply")
    await push(bundle_json(dict(good, **{"cluster.toml": good["cluster.toml"].replace(b"vhid = 2",
                                                                                     b"vhid = 1")})),
               "duplicate vhid")
    await push(bundle_json(dict(good, **{"cluster.toml": good["cluster.toml"].replace(
        b'interface = "lan0"', b'interface = "lan0\\" accept #"', 1)})), "quotes")
    await push(bundle_json(dict(good, **{"ruleset.nft.j2": b"{{ ''.__class__.__mro__ }}\n"})), "unsafe")
    await push(bundle_json(dict(good, **{"ruleset.nft.j2": b"{% include 'secret' %}\n"})), "not found")
    await push(bundle_json(dict(good, **{"ruleset.nft.j2": b"table inet fw { chain x { bogus } }\n"})),
               "syntax error")
    await push(bundle_json(dict(good, big=b"x" * (5 << 20))), "more than")

    # Too many connections at once: the oldest unauthenticated ones make way.
    async def flood():
        conns = [await asyncio.open_connection(HOST, PORT) for _ in range(configchannel.MAX_PENDING + 12)]
        await asyncio.sleep(0.1)
        for _, w in conns:
            w.close()
        await asyncio.sleep(0.6)  # the held ones time out (AUTH_TIMEOUT)
        return b"", None
    await case(f"{configchannel.MAX_PENDING + 12} connections at once", flood(), "preauth_displaced")

    # Issue 21 #3: silent connections from members' addresses (no key) held
    # every slot, and a member's request was refused.
    async def silent(source: str):
        r, w = await asyncio.open_connection(HOST, PORT, local_addr=(source, 0))
        await r.readline()
        return r, w

    async def member_hello():
        return b"", await call(HOST, PORT, key, "fw2", "hello", {}, timeout=5)

    async def slots_held():
        per = configchannel.MAX_PENDING_PER_SOURCE
        held = [await silent(src) for src in ("127.0.0.1", "127.0.0.2") for _ in range(per)]
        try:
            return await member_hello()
        finally:
            for _, w in held:
                w.close()
    await case("every slot held silently from members' addresses, then a member's hello",
               slots_held(), "preauth_displaced", expect_ok=True)

    async def slots_reopened():
        """The holders reconnect as their deadline ends; five hellos meanwhile."""
        held, replies = [], []
        for _ in range(5):
            held += [await silent("127.0.0.1") for _ in range(configchannel.MAX_PENDING)]
            replies.append((await member_hello())[1])
            await asyncio.sleep(configchannel.AUTH_TIMEOUT * 0.8)
        for _, w in held:
            w.close()
        return b"", replies[0] if all(r.get("ok") for r in replies) else {"ok": False, "error": "refused"}
    await case("silent holders reopened every deadline, five member hellos", slots_reopened(),
               "preauth_displaced", expect_ok=True)

    async def one_source():
        """One address's many connections displace its own, not another's."""
        other = [await silent("127.0.0.2") for _ in range(2)]
        flood = [await silent("127.0.0.3") for _ in range(3 * configchannel.MAX_PENDING_PER_SOURCE)]
        for r, w in other:       # still open: the flood displaced only its own
            w.write(b"x")
            await w.drain()
        await asyncio.sleep(0.05)
        kept = not any(r.at_eof() for r, _ in other)
        for _, w in other + flood:
            w.close()
        return b"", {"ok": kept} if kept else {"ok": False, "error": "another source displaced"}
    await case("one source's flood of silent connections", one_source(), "preauth_displaced",
               expect_ok=True)

    cases += await pushed_templates()
    after = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    return {"cases": cases, "counters": svc.counters, "files_unchanged": before == after,
            "generation": svc.own.generation,
            "leftovers": sorted(p.name for p in d.iterdir() if p.name.startswith("."))}


# A member's private file a pushed template must never reach: nft fails on
# its first line, so a render that pulled it in would quote it back.
HOST_KEY = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE-not-a-real-key\n" \
           b"-----END OPENSSH PRIVATE KEY-----\n"
LEAKS = {
    # absent from the staging directory (the check passes), there at apply
    "include of ssh/ host key, ignore missing": "{% include 'ssh/ssh_host_ed25519_key' ignore missing %}",
    # a flat file of the member's own that the bundle does not carry
    "include of a flat file beside the config": "{% include 'ssh_host_ed25519_key' ignore missing %}",
    "nft include of the host key": "include \"DIR/ssh/ssh_host_ed25519_key\"",
}


async def pushed_templates() -> list[dict]:
    """Each LEAKS template pushed to a fresh member (its own directory, its
    own netns ruleset): the reply, the log and the ruleset never carry the
    key; the push is refused or installs a ruleset without it."""
    out = []
    for name, include in LEAKS.items():
        d = Path(tempfile.mkdtemp(prefix="fwleak-"))
        cfg = site(d)
        for key_path in (d / "ssh" / "ssh_host_ed25519_key", d / "ssh_host_ed25519_key"):
            key_path.parent.mkdir(mode=0o700, exist_ok=True)
            key_path.write_bytes(HOST_KEY)
            os.chmod(key_path, 0o600)
        svc = ConfigService(cfg, "fw1", SECRET.encode())
        files = {"cluster.toml": (d / "cluster.toml").read_bytes(),
                 "ruleset.nft.j2": (include.replace("DIR", str(d)) + "\ntable inet fw { }\n").encode()}
        reply = await svc.install(bundle_json(files))
        ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
        leaked = any(b"OPENSSH" in blob or b"not-a-real-key" in blob
                     for blob in (json.dumps(reply).encode(), ruleset.encode()))
        out.append({"class": "pushed template (files outside the bundle)", "case": name,
                    # nft's include is refused outright: it would read the file
                    "handled": not leaked and "\n" not in str(reply.get("error", ""))
                    and ("nft include" not in name or "may not use nft's include" in str(reply)),
                    "counters": {}, "reply": str(reply)[:160], "seconds": 0.0})
    subprocess.run(["nft", "flush", "ruleset"], check=False)
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
