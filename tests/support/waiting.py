"""Waiting for a condition in tests, rather than sleeping and hoping."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(predicate: Callable[[], Any | Awaitable[Any]], timeout: float = 10.0,
                     interval: float = 0.02) -> Any:
    """Re-check `predicate` (sync or async) until it is truthy; its value is returned.

    For state that lives elsewhere (a database, another task's counters) and offers nothing to
    await; raises TimeoutError with the time waited.
    """
    async def poll() -> Any:
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(interval)

    try:
        return await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise TimeoutError(f"condition not met within {timeout} s") from None
