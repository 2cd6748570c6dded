"""syncd supervision (issue 9 #8): a failed task or callback ends the daemon
with status 1 and one log line; SIGHUP calls the reload hook."""
import asyncio
import logging
import os
import signal

from syncd.supervise import Supervisor


def run(body) -> tuple[Supervisor, list[str]]:
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    log = logging.getLogger("test-supervise")
    log.addHandler(Keep())
    log.setLevel(logging.INFO)

    async def main():
        sup = Supervisor(log)
        sup.install(asyncio.get_running_loop())
        await body(sup)
        await asyncio.wait_for(sup.stopping.wait(), 5)
        return sup

    return asyncio.run(main()), records


def test_a_failing_task_ends_the_daemon_with_one_line():
    async def body(sup):
        async def ticker():
            await asyncio.sleep(0.01)
            raise OverflowError("seq does not fit")
        sup.start(ticker(), "ticker")

    sup, lines = run(body)
    assert sup.exit_status == 1
    assert len(lines) == 1 and "task ticker failed: OverflowError" in lines[0]


def test_a_task_that_returns_ends_the_daemon():
    async def body(sup):
        async def loop_that_forgot_to_loop():
            return None
        sup.start(loop_that_forgot_to_loop(), "housekeeping")

    sup, lines = run(body)
    assert sup.exit_status == 1 and "task housekeeping ended" in lines[0]


def test_a_raising_reader_callback_ends_the_daemon():
    """e.g. ENOBUFS from a ctnetlink send() inside on_datagrams."""
    async def body(sup):
        def on_datagrams():
            raise OSError(105, "No buffer space available")
        asyncio.get_running_loop().call_soon(on_datagrams)

    sup, lines = run(body)
    assert sup.exit_status == 1 and len(lines) == 1 and "No buffer space" in lines[0]


def test_sighup_reloads_and_sigterm_stops_cleanly():
    hups = []

    async def body(sup):
        sup.on_hangup = lambda: hups.append(1)
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.05)
        assert not sup.stopping.is_set()
        os.kill(os.getpid(), signal.SIGTERM)

    sup, lines = run(body)
    assert sup.exit_status == 0 and hups == [1] and lines == []


def test_the_unit_restarts_a_failed_syncd():
    from pathlib import Path
    unit = Path(__file__).resolve().parents[2] / \
        "overlays/cluster/usr/lib/systemd/system/fwcluster-syncd.service"
    conf = dict(line.split("=", 1) for line in unit.read_text().splitlines()
                if "=" in line and not line.startswith("#"))
    assert conf["Restart"] in ("on-failure", "always")
    assert "1" not in conf.get("RestartPreventExitStatus", "").split()
