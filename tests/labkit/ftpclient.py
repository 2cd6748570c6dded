"""The lab's FTP client (test tooling): Python's ftplib on one control
connection, running a plan of steps and writing what happened to a JSON
status file after each (and while a download runs).

Steps, comma separated:
  retr:N       download blob-N (tests.labkit.ftpserver), passive or active
  announce     send PASV (passive) or PORT (active) now; the next retr uses
               that data connection instead of announcing its own
  wait         wait until the --go file exists (the test did its fault)

    python -m tests.labkit.ftpclient --host 198.51.100.100 --mode active \\
        --plan retr:4000000,wait,retr:100000 --status s.json --go go
"""
from __future__ import annotations

import argparse
import ftplib
import hashlib
import json
import os
import socket
import time

WAIT_LIMIT = 120.0      # seconds a "wait" step waits for the go file
TIMEOUT = 60.0          # socket timeout of the control and data connections
STATUS_EVERY = 0.1      # seconds between status writes during a download


class Client:
    def __init__(self, host: str, port: int, mode: str, status: str, go: str):
        self.mode, self.status_path, self.go = mode, status, go
        self.ftp = ftplib.FTP(timeout=TIMEOUT)
        self.ftp.connect(host, port)
        self.ftp.login()
        self.ftp.set_pasv(mode == "passive")
        self.announced = None   # (host, port) after PASV, a listening socket after PORT
        self.state = {"mode": mode, "steps": [], "progress": 0, "error": None, "done": False}
        self.write()

    def write(self) -> None:
        tmp = self.status_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f)
        os.replace(tmp, self.status_path)

    def step(self, name: str, **result) -> None:
        self.state["steps"].append({"step": name, "t": time.time(), **result})
        self.write()

    def announce(self) -> None:
        self.announced = self.ftp.makepasv() if self.mode == "passive" else self.ftp.makeport()
        self.step("announce")

    def retr(self, size: int) -> None:
        self.ftp.voidcmd("TYPE I")
        if self.announced is None:
            data = self.ftp.transfercmd(f"RETR blob-{size}")
        else:
            data = self._announced_data(size)
        h, got, last = hashlib.sha256(), 0, 0.0
        with data:
            data.settimeout(TIMEOUT)
            while True:
                chunk = data.recv(65536)
                if not chunk:
                    break
                h.update(chunk)
                got += len(chunk)
                if time.monotonic() - last > STATUS_EVERY:
                    self.state["progress"], last = got, time.monotonic()
                    self.write()
        self.ftp.voidresp()
        self.state["progress"] = got
        self.step(f"retr:{size}", bytes=got, sha256=h.hexdigest())

    def _announced_data(self, size: int) -> socket.socket:
        announced, self.announced = self.announced, None
        if self.mode == "passive":
            data = socket.create_connection(announced, timeout=TIMEOUT)
            self.ftp.sendcmd(f"RETR blob-{size}")
            return data
        with announced:
            announced.settimeout(TIMEOUT)
            self.ftp.sendcmd(f"RETR blob-{size}")
            data, _ = announced.accept()
            return data

    def wait(self) -> None:
        deadline = time.monotonic() + WAIT_LIMIT
        while not os.path.exists(self.go):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {self.go} within {WAIT_LIMIT} s")
            time.sleep(0.02)
        self.step("wait")

    def run(self, plan: list[str]) -> None:
        for item in plan:
            if item.startswith("retr:"):
                self.retr(int(item[5:]))
            elif item == "announce":
                self.announce()
            elif item == "wait":
                self.wait()
            else:
                raise ValueError(f"unknown step {item!r}")
        self.ftp.quit()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=21)
    ap.add_argument("--mode", choices=("passive", "active"), required=True)
    ap.add_argument("--plan", required=True)
    ap.add_argument("--status", required=True)
    ap.add_argument("--go", required=True)
    a = ap.parse_args(argv)
    client = None
    try:
        client = Client(a.host, a.port, a.mode, a.status, a.go)
        client.run(a.plan.split(","))
    except (OSError, EOFError, ftplib.Error, ValueError) as e:
        if client is None:
            with open(a.status, "w") as f:
                json.dump({"mode": a.mode, "steps": [], "progress": 0, "done": False,
                           "error": f"{type(e).__name__}: {e}"}, f)
            return 1
        client.state["error"] = f"{type(e).__name__}: {e}"
        client.write()
        return 1
    client.state["done"] = True
    client.write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
