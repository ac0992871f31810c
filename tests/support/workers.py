"""Daemons run inside the test's event loop (`Worker.run()` as a task), stopped at teardown.

`in_process_workers` is the fixture: `await workers.start(values)` builds a Worker from the
environment-style `values`, runs it and (by default) waits until it is ready; at teardown each
worker started is stopped and must exit 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence

import pytest

from config.env import load_config
from transitions.base import Transition
from worker.app import Worker

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


class InProcessWorkers:
    def __init__(self) -> None:
        self._running: list[tuple[Worker, asyncio.Task[int]]] = []

    async def start(self, values: Mapping[str, str], *, extra_transitions: Sequence[Transition] = (),
                    wait_ready: bool = True) -> Worker:
        worker = Worker(load_config(dict(values)), extra_transitions=extra_transitions)
        # Registered before waiting, so a worker that never gets ready is still stopped.
        self._running.append((worker, asyncio.create_task(worker.run())))
        if wait_ready:
            await asyncio.wait_for(worker.ready.wait(), READY_TIMEOUT)
        return worker

    async def stop_all(self) -> None:
        for worker, task in self._running:
            worker.stop()
            assert await asyncio.wait_for(task, STOP_TIMEOUT) == 0
        self._running.clear()


@pytest.fixture
async def in_process_workers() -> AsyncIterator[InProcessWorkers]:
    workers = InProcessWorkers()
    yield workers
    await workers.stop_all()
