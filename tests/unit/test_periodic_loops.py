"""Periodic loops survive a failing round (a bug or an unforeseen doc never stops the daemon)."""

import asyncio

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
