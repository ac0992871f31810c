"""Waits for the local CouchDB-protocol server and seeds a CHT-like medic database (dev only).

Creates the medic database with CHT's design docs (the tests' equivalents) and an example
settings doc, unless they are there already. Usage: dev_seed.py COUCH_URL
"""

from __future__ import annotations

import base64
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def request(method: str, url: str, auth: str, body: object = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Basic {auth}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def main(couch_url: str) -> None:
    parts = urlsplit(couch_url)
    auth = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    db_url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    server_url = db_url.rsplit("/", 1)[0]

    deadline = time.monotonic() + 30
    while True:
        try:
            request("GET", server_url + "/", auth)
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("dev_seed: the local CouchDB-protocol server did not start; "
                         "see .devdata/couchdb.log")
            time.sleep(0.2)

    request("PUT", db_url, auth)
    docs = json.loads((FIXTURES / "cht_design_docs.json").read_text())["docs"]
    settings = json.loads((FIXTURES / "settings_example.json").read_text())
    for doc in [*docs, settings]:
        status, _ = request("GET", f"{db_url}/{doc['_id']}", auth)
        if status == 404:
            request("PUT", f"{db_url}/{doc['_id']}", auth, doc)


if __name__ == "__main__":
    main(sys.argv[1])
