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
from playground.fake_workspace import FakeWorkspace, workspace_of
from playground.rapidpro_profiles import PROFILE_NAMES
from transitions.rapidpro.relay_flow import relay_export

__all__ = ["DEFAULT_TOKEN", "PROFILE_NAMES", "FakeClock", "fake_rapidpro", "fake_rapidpro_factory",
           "fake_workspace", "rapidpro_profile", "seed_relay"]


@pytest.fixture
def rapidpro_profile() -> str:
    """The RapidPro version the fake answers as; tests parametrise it (playground/rapidpro_profiles.py)."""
    return "current"


@pytest_asyncio.fixture
async def fake_rapidpro(rapidpro_profile: str) -> AsyncIterator[FakeRapidPro]:
    """A running fake on 127.0.0.1 (random port), real clock, token ``DEFAULT_TOKEN``, answering as
    ``rapidpro_profile``, with the workspace set-up endpoints (playground/fake_workspace.py: one
    awake Android channel)."""
    fake = FakeRapidPro(profile=rapidpro_profile)
    workspace_of(fake)
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
        workspace_of(fake)
        await fake.start()
        started.append(fake)
        return fake

    try:
        yield make
    finally:
        for fake in reversed(started):
            await fake.stop()


@pytest_asyncio.fixture
async def fake_workspace(fake_rapidpro: FakeRapidPro) -> FakeWorkspace:
    """`fake_rapidpro`'s globals, flows, triggers and channels."""
    return workspace_of(fake_rapidpro)


def seed_relay(workspace: FakeWorkspace, *, cht_url: str, key: str) -> None:
    """A workspace set up right: the file `rapidpro setup` writes imported, both globals set."""
    workspace.import_export(relay_export(workspace.fake.url))
    workspace.set_global("cht_url", cht_url, name="CHT URL")
    workspace.set_global("cht_api_key", key, name="CHT API Key")
