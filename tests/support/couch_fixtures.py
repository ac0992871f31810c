"""pytest plugin: a CouchDB server for the session and a fresh CHT `medic` database per test.

Enable with `pytest_plugins = ["tests.support.couch_fixtures"]` in tests/conftest.py.

- `couch_server_url` (session): admin URL of the server, credentials included. When the
  TEST_COUCH_URL environment variable is set (an external Apache CouchDB 3, admin credentials in
  the URL) that server is used and no local one is started; otherwise the project's Node test
  server runs in memory for the whole session.
- `medic_db` (function): a new database `medic-t<8 hex>` holding CHT's design docs; `.url` is what
  the worker takes as COUCH_URL. It and its `-vault` / `-rapidpro` siblings are deleted afterwards.
- `put_settings(db_url, settings)`: writes CHT's settings doc.
- `couch_request(method, url, body)`, `create_db(url)`, `delete_db(url)`: small sync helpers.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.couchserver import CouchTestServer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
# CHT's design docs as written for the project; the playground seeds them too.
DESIGN_DOCS_FILE = Path(__file__).resolve().parents[2] / "playground" / "cht" / "design_docs.json"
SETTINGS_FILE = FIXTURES / "settings_example.json"
TEST_COUCH_URL_ENV = "TEST_COUCH_URL"


# ---------------------------------------------------------------------------- HTTP helpers
def couch_request(method: str, url: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    """One request to CouchDB; credentials in `url` become Basic auth. Returns (status, JSON).

    HTTP errors are returned, not raised; the body is parsed as JSON whatever the Content-Type.
    """
    parts = urllib.parse.urlsplit(url)
    headers = {"Accept": "application/json"}
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    bare = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(bare, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw) if raw.strip() else None
    except ValueError:
        return status, raw.decode(errors="replace")


def _quote_db(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def create_db(db_url: str, retry_for: float = 10.0) -> None:
    """PUT the database. CouchDB 3 can answer 412 to a create just after a delete of the same
    name (and then drop the new db): retry for a while until the create really succeeds."""
    deadline = time.monotonic() + retry_for
    while True:
        status, body = couch_request("PUT", db_url)
        if status in (201, 202):
            return
        if status != 412 or time.monotonic() > deadline:
            raise RuntimeError(f"PUT {_redact(db_url)} -> {status} {body}")
        time.sleep(0.1)


def delete_db(db_url: str) -> None:
    """DELETE the database; a missing one is fine."""
    status, body = couch_request("DELETE", db_url)
    if status not in (200, 202, 404):
        raise RuntimeError(f"DELETE {_redact(db_url)} -> {status} {body}")


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


# ---------------------------------------------------------------------------- CHT data
def load_design_docs() -> list[dict[str, Any]]:
    """CHT's design docs as written for the tests (playground/cht/design_docs.json)."""
    return json.loads(DESIGN_DOCS_FILE.read_text())["docs"]


def load_example_settings() -> dict[str, Any]:
    """The app settings (the `settings` key) of tests/fixtures/settings_example.json; a copy."""
    return copy.deepcopy(json.loads(SETTINGS_FILE.read_text())["settings"])


def seed_design_docs(db_url: str) -> None:
    status, body = couch_request("POST", f"{db_url}/_bulk_docs", {"docs": load_design_docs()})
    failed = [item for item in body or [] if "error" in item] if status == 201 else body
    if status != 201 or failed:
        raise RuntimeError(f"seeding design docs failed: {status} {failed}")


def put_settings(db_url: str, settings: dict[str, Any]) -> str:
    """Create or replace the CHT settings doc `{_id: "settings", settings: ...}`; returns the rev."""
    for _ in range(5):
        status, current = couch_request("GET", f"{db_url}/settings")
        doc: dict[str, Any] = {"_id": "settings", "settings": settings}
        if status == 200:
            doc["_rev"] = current["_rev"]
        status, body = couch_request("PUT", f"{db_url}/settings", doc)
        if status in (201, 202):
            return body["rev"]
        if status != 409:
            break
    raise RuntimeError(f"writing settings failed: {status} {body}")


def put_vault_credential(vault_url: str, credential_id: str, password: str) -> str:
    """Store a credential as CHT's api does (cht-core shared-libs/settings `setCredentials`): a PUT to
    `<vault>/credential:<encodeURIComponent(id)>`. CouchDB decodes the URL and keeps the URL's id
    (CHT's body `_id` is the encoded string, which CouchDB overrides), so the doc is
    `credential:rapidpro:outgoing`; the body here says that decoded id, so the local test server
    (which would keep a body's `_id`) stores the same doc. `password` is the stored (encrypted)
    value. Creates or replaces; returns the rev."""
    encoded = urllib.parse.quote(credential_id, safe="-_.!~*'()")  # JavaScript's encodeURIComponent
    url = f"{vault_url}/credential:{encoded}"
    for _ in range(5):
        status, current = couch_request("GET", url)
        doc = current if status == 200 else {"_id": f"credential:{credential_id}"}
        doc["password"] = password
        status, body = couch_request("PUT", url, doc)
        if status in (201, 202):
            return body["rev"]
        if status != 409:
            break
    raise RuntimeError(f"storing the vault credential failed: {status} {body}")


def delete_vault_credential(vault_url: str, credential_id: str) -> None:
    """Remove a credential from the vault (a missing one is fine)."""
    url = f"{vault_url}/credential:{urllib.parse.quote(credential_id, safe='')}"
    status, current = couch_request("GET", url)
    if status == 200:
        status, body = couch_request("DELETE", f"{url}?rev={current['_rev']}")
        if status not in (200, 202):
            raise RuntimeError(f"deleting the vault credential failed: {status} {body}")


@dataclass(frozen=True)
class MedicDb:
    name: str
    url: str  # server URL + "/" + name, credentials included: the worker's COUCH_URL
    server_url: str

    @property
    def vault_url(self) -> str:
        return f"{self.url}-vault"


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def couch_server_url() -> Iterator[str]:
    external = os.environ.get(TEST_COUCH_URL_ENV, "").strip()
    if external:
        yield external.rstrip("/")
        return
    server = CouchTestServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def medic_db(couch_server_url: str) -> Iterator[MedicDb]:
    name = f"medic-t{uuid.uuid4().hex[:8]}"
    db = MedicDb(name=name, url=f"{couch_server_url}/{_quote_db(name)}", server_url=couch_server_url)
    create_db(db.url)
    try:
        seed_design_docs(db.url)
        yield db
    finally:
        for suffix in ("", "-vault", "-rapidpro"):
            delete_db(f"{couch_server_url}/{_quote_db(name + suffix)}")
