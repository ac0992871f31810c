"""Pytest plugin with fixtures for the fake RapidPro (register it from conftest.py:
``pytest_plugins = ["tests.support.rapidpro_fixtures"]``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio

from playground.fake_rapidpro import DEFAULT_TOKEN, FakeClock, FakeRapidPro

__all__ = ["DEFAULT_TOKEN", "FakeClock", "fake_rapidpro", "fake_rapidpro_factory"]


@pytest_asyncio.fixture
async def fake_rapidpro() -> AsyncIterator[FakeRapidPro]:
    """A running fake on 127.0.0.1 (random port), real clock, token ``DEFAULT_TOKEN``."""
    fake = FakeRapidPro()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest_asyncio.fixture
async def fake_rapidpro_factory() -> AsyncIterator[Callable[..., Awaitable[FakeRapidPro]]]:
    """``await factory(clock=FakeClock(), tokens={...})``: started fakes, all stopped at the end
    (for tests that need a manual clock from the start, or two workspaces/servers)."""
    started: list[FakeRapidPro] = []

    async def make(**kwargs: Any) -> FakeRapidPro:
        fake = FakeRapidPro(**kwargs)
        await fake.start()
        started.append(fake)
        return fake

    try:
        yield make
    finally:
        for fake in reversed(started):
            await fake.stop()
