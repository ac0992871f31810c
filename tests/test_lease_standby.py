"""A standby serves the webhook without following the feed: it keeps the settings (SMS forms)
current by itself."""

from __future__ import annotations

import asyncio

from config.env import load_config
from tests.support.couch_fixtures import put_settings
from tests.support.waiting import eventually
from worker.app import Worker
from worker.cht import refresh as refresh_module


def settings_with(forms: dict) -> dict:
    return {"sms": {"outgoing_service": "medic-gateway"}, "default_country_code": 254, "forms": forms}


async def test_a_standby_picks_up_a_new_form_without_the_feed(medic_db, monkeypatch):
    monkeypatch.setattr(refresh_module, "STANDBY_REFRESH_S", 0.2)
    await asyncio.to_thread(put_settings, medic_db.url, settings_with({}))
    workers = [Worker(load_config({"COUCH_URL": medic_db.url, "LISTEN_PORT": "0", "INSTANCE_ID": name,
                                   "LEASE_TTL": "3"})) for name in ("one", "two")]
    tasks = []
    try:
        for worker in workers:
            tasks.append(asyncio.create_task(worker.run()))
            await asyncio.wait_for(worker.ready.wait(), 20)
        active, standby = workers
        assert (active.lease.role, standby.lease.role) == ("active", "standby")
        form = {"V": {"meta": {"code": "V"}, "fields": {"n": {"type": "string", "position": 0}}}}
        await asyncio.to_thread(put_settings, medic_db.url, settings_with(form))
        for worker in workers:
            await eventually(lambda w=worker: w.settings.current is not None
                             and "V" in w.settings.current.forms, timeout=15)
    finally:
        for worker in workers:
            worker.stop()
        for task in tasks:
            assert await asyncio.wait_for(task, 15) == 0
