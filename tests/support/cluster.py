"""A 3-node CouchDB cluster under test: its nodes' URLs and a command that pauses, resumes,
partitions and heals them (for tests/test_cluster.py and bench/chaos.py --cluster).

Given by the environment, never found by the project itself:
- TEST_COUCH_CLUSTER_URLS: the nodes' URLs with admin credentials, comma-separated
  (`http://admin:pass@127.0.0.1:25984,...`), node 1 first;
- TEST_COUCH_CLUSTER_CTL: a command taking `pause N`, `resume N`, `partition N` and `heal`
  (N = 1..3; `partition N` cuts node N's links to the other two while its HTTP port stays up).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import urllib.parse
from typing import Any

URLS_VARIABLE = "TEST_COUCH_CLUSTER_URLS"
CTL_VARIABLE = "TEST_COUCH_CLUSTER_CTL"


class Cluster:
    def __init__(self, urls: list[str], ctl: str) -> None:
        self.urls = [url.strip().rstrip("/") for url in urls if url.strip()]
        self._ctl = shlex.split(ctl)
        self.paused: set[int] = set()
        self.partitioned: set[int] = set()

    @classmethod
    def from_environment(cls) -> Cluster | None:
        urls = os.environ.get(URLS_VARIABLE, "").split(",")
        ctl = os.environ.get(CTL_VARIABLE, "").strip()
        if len([u for u in urls if u.strip()]) < 3 or not ctl:
            return None
        return cls(urls, ctl)

    def node_of(self, url: str) -> int:
        """1..3: the node a URL (or a database URL on it) points at."""
        port = urllib.parse.urlsplit(url).port
        for i, node in enumerate(self.urls, start=1):
            if urllib.parse.urlsplit(node).port == port:
                return i
        raise ValueError(f"{url} is no node of the cluster")

    def _run(self, *args: str) -> None:
        subprocess.run([*self._ctl, *args], check=True, capture_output=True, timeout=180)

    def pause(self, node: int) -> None:
        self._run("pause", str(node))
        self.paused.add(node)

    def resume(self, node: int) -> None:
        self._run("resume", str(node))
        self.paused.discard(node)

    def partition(self, node: int) -> None:
        self._run("partition", str(node))
        self.partitioned.add(node)

    def heal(self) -> None:
        self._run("heal")
        self.partitioned.clear()

    def restore(self) -> None:
        """Every node running and connected again (after a run, whatever happened)."""
        for node in sorted(self.paused):
            self.resume(node)
        self.heal()


def conflicted_docs(db_url: str, couch_request: Any) -> list[str]:
    """Ids of the docs of a database that have conflicting revisions."""
    found: list[str] = []
    start: str | None = None
    while True:
        query = "include_docs=true&conflicts=true&limit=1000"
        if start is not None:
            query += "&startkey=" + urllib.parse.quote(f'"{start}"') + "&skip=1"
        status, body = couch_request("GET", f"{db_url}/_all_docs?{query}", timeout=120)
        assert status == 200, body
        rows = body.get("rows", [])
        found += [row["id"] for row in rows if (row.get("doc") or {}).get("_conflicts")]
        if len(rows) < 1000:
            return found
        start = rows[-1]["id"]
