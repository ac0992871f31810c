"""Pytest plugin with fixtures for the fake RapidPro (register it from conftest.py:
``pytest_plugins = ["tests.support.rapidpro_fixtures"]``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio

from playground.fake_rapidpro import DEFAULT_TOKEN, FakeClock, FakeRapidPro
from playground.fake_workspace import FakeWorkspace, workspace_of
from transitions.relay_flow import relay_export

__all__ = ["DEFAULT_TOKEN", "FakeClock", "fake_rapidpro", "fake_rapidpro_factory", "fake_workspace",
           "seed_relay"]


@pytest_asyncio.fixture
async def fake_rapidpro() -> AsyncIterator[FakeRapidPro]:
    """A running fake on 127.0.0.1 (random port), real clock, token ``DEFAULT_TOKEN``, with the
    workspace set-up endpoints (playground/fake_workspace.py: one awake Android channel)."""
    fake = FakeRapidPro()
    workspace_of(fake)
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
