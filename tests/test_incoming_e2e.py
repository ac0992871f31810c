"""Incoming SMS through the running worker: RapidPro's webhook → a CHT report in medic."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.support.cht_translations import cht_translation_docs
from tests.support.couch_fixtures import couch_request, put_settings
from tests.support.waiting import eventually
from transitions.incoming.record import doc_id_for

FORMS = {
    "FORM": {"meta": {"code": "FORM"}, "fields": {"some_data": {"type": "string", "position": 0,
                                                                "labels": {"short": "Some data"}}}},
    # A registration form as in CHT's SMS-forms documentation.
    "N": {"meta": {"code": "N", "label": {"en": "New Person Registration"}}, "fields": {
        "place_id": {"labels": {"tiny": {"en": "place_id"}}, "position": 0, "type": "string",
                     "required": True},
        "gender": {"labels": {"tiny": {"en": "gender"}}, "position": 1, "type": "string", "required": True},
        "age": {"labels": {"tiny": {"en": "age"}}, "position": 2, "type": "integer", "required": True},
        "patient_name": {"labels": {"tiny": {"en": "patient_name"}}, "position": 3, "type": "string",
                         "required": True}}},
}


async def test_webhook_turns_a_form_text_into_a_cht_report(medic_db, in_process_workers):
    await asyncio.to_thread(put_settings, medic_db.url, {"default_country_code": 254, "locale": "en",
                                                         "forms": FORMS})
    worker = await in_process_workers.start({"COUCH_URL": medic_db.url, "LISTEN_PORT": "0",
                                             "RAPIDPRO_INCOMING_KEY": "incoming-secret"})
    url = f"http://127.0.0.1:{worker.http.port}/api/v2/sms/rapidpro/incoming-messages"
    body = {"id": "run-1", "from": "0712345678", "content": "FORM the data"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers={"Authorization": "Token incoming-secret"}) as r:
            assert (r.status, await r.json()) == (200, {"saved": 1})
        async with session.post(url, json=body, headers={"Authorization": "Token incoming-secret"}) as r:
            assert (r.status, await r.json()) == (200, {"saved": 0})
        async with session.post(url, json=body, headers={"Authorization": "Token wrong"}) as r:
            assert (r.status, await r.json()) == (403, {"code": 403, "error": "Incorrect token"})
    status, doc = await asyncio.to_thread(couch_request, "GET", f"{medic_db.url}/{doc_id_for('run-1')}")
    assert status == 200
    assert doc["type"] == "data_record"
    assert doc["form"] == "FORM"
    assert doc["fields"] == {"some_data": "the data"}
    assert doc["from"] == "+254712345678"
    assert doc["sms_message"]["gateway_ref"] == "run-1"
    assert doc["sms_message"]["message"] == "FORM the data"
    health = await worker.health()
    assert health["incoming"]["key_source"] == "environment"

    # A registration: the whole doc, as CHT's API would create it.
    body = {"id": "run-2", "from": "+254712345679", "content": "N 12345 F 20 Jane Cho"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=json.dumps(body),  # no Content-Type, like RapidPro's editor
                                headers={"Authorization": "Token incoming-secret"}) as r:
            assert (r.status, await r.json()) == (200, {"saved": 1})
    status, doc = await asyncio.to_thread(couch_request, "GET", f"{medic_db.url}/{doc_id_for('run-2')}")
    assert status == 200
    assert isinstance(doc.pop("reported_date"), int)
    assert doc.pop("_id") == doc_id_for("run-2")
    doc.pop("_rev")
    assert doc == {
        "type": "data_record", "from": "+254712345679", "form": "N",
        "fields": {"place_id": "12345", "gender": "F", "age": 20, "patient_name": "Jane Cho"},
        "errors": [], "tasks": [],
        "sms_message": {"message": "N 12345 F 20 Jane Cho", "from": "+254712345679",
                        "gateway_ref": "run-2", "form": "N", "type": "sms_message"},
    }


async def _post(url: str, body: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers={"Authorization": "Token incoming-secret"}) as r:
            assert (r.status, await r.json()) == (200, {"saved": 1})


async def _stored_errors(medic_url: str, rapidpro_id: str) -> list[dict[str, str]]:
    status, doc = await asyncio.to_thread(couch_request, "GET", f"{medic_url}/{doc_id_for(rapidpro_id)}")
    assert status == 200
    assert "locale" not in doc["sms_message"]  # CHT's RapidPro endpoint stores none
    return doc["errors"]


async def test_a_french_deployment_gets_its_errors_in_french_from_its_translation_docs(
        medic_db, in_process_workers):
    # CHT's translation docs live in medic; the worker reads them at start and follows them.
    for doc in cht_translation_docs():
        status, _ = await asyncio.to_thread(couch_request, "PUT", f"{medic_db.url}/{doc['_id']}", doc)
        assert status == 201
    await asyncio.to_thread(put_settings, medic_db.url, {"default_country_code": 254, "locale": "fr",
                                                         "forms": FORMS})
    worker = await in_process_workers.start({"COUCH_URL": medic_db.url, "LISTEN_PORT": "0",
                                             "RAPIDPRO_INCOMING_KEY": "incoming-secret"})
    url = f"http://127.0.0.1:{worker.http.port}/api/v2/sms/rapidpro/incoming-messages"
    assert {"en", "fr", "ne"} <= set((await worker.health())["translations"]["locales"])
    await _post(url, {"id": "fr-1", "from": "0712345678", "content": "N 12345 F 20"})
    assert await _stored_errors(medic_db.url, "fr-1") == [
        {"code": "sys.missing_fields", "message": "Champs invalides ou manquants: patient_name."}]

    # The deployment overrides the text: `custom` wins, through the changes feed.
    status, fr = await asyncio.to_thread(couch_request, "GET", f"{medic_db.url}/messages-fr")
    fr["custom"] = {"sys.missing_fields": "Il manque : {{fields}}"}
    status, _ = await asyncio.to_thread(couch_request, "PUT", f"{medic_db.url}/messages-fr", fr)
    assert status == 201
    await eventually(lambda: worker.translations.current.lookup("sys.missing_fields", "fr")
                     == "Il manque : {{fields}}")
    await _post(url, {"id": "fr-2", "from": "0712345678", "content": "N 12345 F 20"})
    assert await _stored_errors(medic_db.url, "fr-2") == [
        {"code": "sys.missing_fields", "message": "Il manque : patient_name"}]

    # Deleting the French doc leaves English, CHT's fallback.
    status, fr = await asyncio.to_thread(couch_request, "GET", f"{medic_db.url}/messages-fr")
    status, _ = await asyncio.to_thread(couch_request, "DELETE",
                                        f"{medic_db.url}/messages-fr?rev={fr['_rev']}")
    assert status == 200
    await eventually(lambda: "fr" not in worker.translations.current.by_locale)
    await _post(url, {"id": "fr-3", "from": "0712345678", "content": "N 12345 F 20"})
    assert await _stored_errors(medic_db.url, "fr-3") == [
        {"code": "sys.missing_fields", "message": "Missing or invalid fields: patient_name."}]
