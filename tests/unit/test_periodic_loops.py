"""Periodic loops survive a failing round (a bug or an unforeseen doc never stops the daemon)."""

import asyncio

from config.settings import parse_settings
from worker.outgoing.cht_sender import ChtSenderWatch
from worker.outgoing.sweep import PendingSweep


class ExplodingThenFineMedic:
    def __init__(self) -> None:
        self.calls = 0
        self.second_call = asyncio.Event()

    async def view(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            raise KeyError("rows")  # not a CouchError: something nobody foresaw
        self.second_call.set()
        return {"rows": []}

    async def all_docs(self, **kwargs):
        return {"rows": []}


async def test_sweep_loop_goes_on_after_an_unexpected_error():
    medic = ExplodingThenFineMedic()

    async def submit(change):
        raise AssertionError("nothing to submit")

    async def in_charge() -> bool:
        return True

    sweep = PendingSweep(medic, submit, in_charge)  # type: ignore[arg-type]
    task = asyncio.create_task(sweep.run(interval=0.01))
    try:
        await asyncio.wait_for(medic.second_call.wait(), 5)
    finally:
        task.cancel()
    assert medic.calls >= 2
    assert sweep.last_count == 0


class FlippingVault:
    """CHT's vault holding rapidpro:outgoing, then not: every read flips the answer."""

    def __init__(self) -> None:
        self.reads = 0
        self.third_read = asyncio.Event()

    async def has(self, name: str) -> bool:
        self.reads += 1
        if self.reads >= 3:
            self.third_read.set()
        return self.reads % 2 == 1


async def test_cht_sender_watch_goes_on_after_its_take_over_fails():
    settings = parse_settings({"settings": {"sms": {"outgoing_service": "rapidpro",
                                                    "rapidpro": {"url": "https://rapidpro.example.org"}}}})
    vault = FlippingVault()

    async def take_over() -> None:
        raise KeyError("sweep")  # something nobody foresaw, in the switch the watch calls

    watch = ChtSenderWatch(vault, lambda: settings, interval=0.01, on_change=take_over)  # type: ignore[arg-type]
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.wait_for(vault.third_read.wait(), 5)
    finally:
        task.cancel()
    assert vault.reads >= 3  # the read after the failed take-over happened: the watch went on
