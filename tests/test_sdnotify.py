"""systemd notifications: datagrams on a socket given as NOTIFY_SOCKET, as systemd would read them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.daemon import Daemon
from tests.support.tcp_proxy import TcpProxy
from worker.sdnotify import Notifier

pytestmark = [pytest.mark.slow, pytest.mark.daemon]


class Listener:
    """A SOCK_DGRAM socket standing in for systemd's notification socket."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.received: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        """Every datagram waiting now (never blocks)."""
        got: list[dict[str, str]] = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            got.append(dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line))
        self.received.extend(got)
        return got

    async def wait_for(self, key: str, value: str | None = None, timeout: float = 30.0) -> dict[str, str]:
        async def poll() -> dict[str, str]:
            while True:
                for message in self.drain():
                    if key in message and (value is None or message[key] == value):
                        return message
                await asyncio.sleep(0.02)
        return await asyncio.wait_for(poll(), timeout)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[tuple[str, Listener]]:
    path = str(tmp_path / "notify")
    listener = Listener(path)
    yield path, listener
    listener.close()


def test_outside_systemd_everything_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.notify(ready="1") is False


def test_a_path_and_an_abstract_socket_both_receive(path_listener: tuple[str, Listener]) -> None:
    path, listener = path_listener
    Notifier({"NOTIFY_SOCKET": path}).ready(status="up")
    assert listener.drain() == [{"READY": "1", "STATUS": "up"}]

    name = f"cht-rapidpro-test-{uuid.uuid4().hex}"
    abstract = Listener(b"\0" + name.encode())
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).notify(stopping="1")
        assert abstract.drain() == [{"STOPPING": "1"}]
    finally:
        abstract.close()


def test_watchdog_is_honoured_only_for_this_process(path_listener: tuple[str, Listener]) -> None:
    path, _ = path_listener
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"}).watchdog_interval == 4.0
    other = str(os.getpid() + 1)
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000",
                     "WATCHDOG_PID": other}).watchdog_interval is None


async def test_a_blocked_event_loop_stops_the_watchdog_pings(path_listener: tuple[str, Listener]) -> None:
    path, listener = path_listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})  # ping every 50 ms
    task = asyncio.create_task(notifier.watchdog())
    try:
        await listener.wait_for("WATCHDOG", "1")
        await listener.wait_for("WATCHDOG", "1")  # it keeps pinging while the loop turns
        listener.drain()
        time.sleep(0.5)  # noqa: ASYNC251 - the point: a blocking call wedges the loop for 10 intervals
        # Nothing else in this process sends, and the pinger could not run: not one ping.
        assert listener.drain() == []
        await listener.wait_for("WATCHDOG", "1")  # the loop turns again: so do the pings
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        notifier.close()


async def test_the_daemon_is_ready_only_after_couchdb_answered_then_reports_and_stops(
        medic_db, path_listener: tuple[str, Listener]) -> None:
    path, listener = path_listener
    target = urlsplit(medic_db.server_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5984)
    await proxy.start()
    proxy.set_mode("down")
    credentials = f"{target.username}:{target.password}@" if target.username else ""
    daemon = Daemon({"COUCH_URL": f"http://{credentials}127.0.0.1:{proxy.port}/{medic_db.name}",
                     "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    try:
        daemon.start()
        await asyncio.to_thread(daemon.wait_event, "couch_unavailable")
        await listener.wait_for("STATUS")  # "starting: waiting for CouchDB"
        await listener.wait_for("WATCHDOG", "1")  # pings while it waits: it is not wedged
        assert not any("READY" in m for m in listener.received)

        proxy.set_mode("up")
        ready = await listener.wait_for("READY", "1")
        assert await asyncio.to_thread(daemon.wait_event, "http_listening")  # it listened before READY
        assert "feed" in ready["STATUS"] and "sending" in ready["STATUS"]
        await listener.wait_for("WATCHDOG", "1")

        daemon.signal(signal.SIGTERM)
        stopping = await listener.wait_for("STOPPING", "1")
        assert stopping["STATUS"] == "stopping"
        code = await asyncio.to_thread(daemon.process.wait, 20)  # type: ignore[union-attr]
        assert code == 0
    finally:
        daemon.kill()
        await proxy.stop()
