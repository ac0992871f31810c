"""Pytest plugin with fixtures for the fake RapidPro (register it from conftest.py:
``pytest_plugins = ["tests.support.rapidpro_fixtures"]``).

The fakes answer as the RapidPro version `rapidpro_profile` names: "current", unless a test module
overrides the fixture, e.g. with `params=PROFILE_NAMES` to run its tests against every version in
playground/rapidpro_profiles.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from playground.fake_rapidpro import DEFAULT_TOKEN, FakeClock, FakeRapidPro
from playground.rapidpro_profiles import PROFILE_NAMES

__all__ = ["DEFAULT_TOKEN", "PROFILE_NAMES", "FakeClock", "fake_rapidpro", "fake_rapidpro_factory",
           "rapidpro_profile"]


@pytest.fixture
def rapidpro_profile() -> str:
    return "current"


@pytest_asyncio.fixture
async def fake_rapidpro(rapidpro_profile: str) -> AsyncIterator[FakeRapidPro]:
    """A running fake on 127.0.0.1 (random port), real clock, token ``DEFAULT_TOKEN``."""
    fake = FakeRapidPro(profile=rapidpro_profile)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest_asyncio.fixture
async def fake_rapidpro_factory(
        rapidpro_profile: str) -> AsyncIterator[Callable[..., Awaitable[FakeRapidPro]]]:
    """``await factory(clock=FakeClock(), tokens={...})``: started fakes, all stopped at the end
    (for tests that need a manual clock from the start, or two workspaces/servers)."""
    started: list[FakeRapidPro] = []

    async def make(**kwargs: Any) -> FakeRapidPro:
        fake = FakeRapidPro(**{"profile": rapidpro_profile, **kwargs})
        await fake.start()
        started.append(fake)
        return fake

    try:
        yield make
    finally:
        for fake in reversed(started):
            await fake.stop()
