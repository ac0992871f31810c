"""CHT's vault credentials (medic-vault) and the worker's own configured ones, re-read regularly.

A configured value (environment, `.env`, or a file such as a systemd credential) wins over the
vault. Values are cached for `ttl` seconds so a rotated token or key works without a restart.
Nothing here ever logs a value.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from config.credentials import CredentialError, decrypt_credential
from worker.couch.client import CouchError, CouchServer, CouchUnavailable, NotFound, Unauthorized
from worker.logs import get_logger

log = get_logger(__name__)

# CHT 4.x reads only `couch_httpd_auth/secret` (cht-core shared-libs/settings `getKey`); the newer
# `chttpd_auth/secret` is asked only where that one is absent, so both decrypt the same way.
SECRET_PATHS = ("_node/_local/_config/couch_httpd_auth/secret", "_node/_local/_config/chttpd_auth/secret")


class Vault:
    """Reads `credential:<id>` docs from the vault db and decrypts them with the server secret."""

    def __init__(self, couch: CouchServer, vault_db: str, secret: str | None = None) -> None:
        self._db = couch.db(vault_db)
        self._couch = couch
        self._configured_secret = secret
        self._secret: str | None = secret

    async def _server_secret(self) -> str | None:
        if self._configured_secret:
            return self._configured_secret
        for path in SECRET_PATHS:
            try:
                value = await self._couch.request_json("GET", path)
            except (NotFound, Unauthorized):
                continue
            if isinstance(value, str) and value:
                self._secret = value
                return value
        return None

    async def has(self, credential_id: str) -> bool:
        """Whether CHT's vault holds this credential with a value (without decrypting it): what
        CHT's own sender needs to run (cht-core shared-libs/settings `getCredentials`)."""
        try:
            doc = await self._db.get_or_none(_doc_id(credential_id))
        except NotFound:  # no vault database at all
            return False
        return doc is not None and bool(doc.get("password"))

    async def read(self, credential_id: str) -> str | None:
        """The decrypted credential, or None when absent or undecryptable (logged)."""
        try:
            doc = await self._db.get_or_none(_doc_id(credential_id))
        except NotFound:
            return None
        if doc is None:
            return None
        secret = await self._server_secret()
        if not secret:
            log.error("vault_secret_unavailable", credential=credential_id,
                      hint="set COUCH_SECRET, or use an admin user that may read the server config")
            return None
        try:
            return decrypt_credential(str(doc.get("password", "")), secret)
        except CredentialError as exc:
            log.error("vault_credential_unreadable", credential=credential_id, error=str(exc))
            return None


def _doc_id(credential_id: str) -> str:
    # CHT's api PUTs `<vault>/credential:<encodeURIComponent(id)>` (cht-core shared-libs/settings);
    # CouchDB decodes the URL, so the doc id is `credential:rapidpro:outgoing`. The CouchDB client
    # encodes it once on the wire.
    return "credential:" + credential_id


class Credential:
    """One named secret: configured value, else configured file, else the vault; cached `ttl` s."""

    def __init__(self, vault: Vault | None, vault_id: str, *, value: str | None = None,
                 file: Path | None = None, ttl: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._vault = vault
        self.vault_id = vault_id
        self._value = value
        self._file = file
        self._ttl = ttl
        self._clock = clock
        self._cached: str | None = None
        self._cached_at: float | None = None
        self._lock = asyncio.Lock()
        self.source: str | None = None  # "environment" | "file" | "vault" | None, for /healthz

    def invalidate(self) -> None:
        self._cached_at = None

    async def get(self) -> str | None:
        if self._value:
            self.source = "environment"
            return self._value
        async with self._lock:
            now = self._clock()
            if self._cached_at is not None and now - self._cached_at < self._ttl:
                return self._cached
            try:
                value, source = await self._load()
            except CouchUnavailable:
                if self._cached_at is not None:
                    return self._cached  # stale beats nothing while CouchDB is away
                raise
            self._cached, self._cached_at, self.source = value, now, source
            return value

    async def _load(self) -> tuple[str | None, str | None]:
        if self._file is not None:
            try:
                text = await asyncio.to_thread(self._file.read_text, encoding="utf-8")
            except OSError as exc:
                log.error("credential_file_unreadable", credential=self.vault_id, path=str(self._file),
                          error=type(exc).__name__)
                return None, None
            return (text.strip() or None), "file"
        if self._vault is None:
            return None, None
        try:
            value = await self._vault.read(self.vault_id)
        except CouchError as exc:
            if isinstance(exc, CouchUnavailable):
                raise
            log.error("vault_unreadable", credential=self.vault_id, error=str(exc))
            return None, None
        return value, ("vault" if value else None)
