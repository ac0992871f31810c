"""deploy/docker-compose.yml must load with Compose v1 (docker-compose 1.29.2, what Debian 12 ships;
Compose v2 is not in Debian 12) as well as v2. v1 validates a file without `version:` against its
copy of the Compose Specification, whose top level allows only version, services, networks,
volumes, secrets, configs and `x-` extensions: a top-level `name:` (added to the specification
later, and used by v2) makes it refuse the whole file ("'name' does not match any of the regexes:
'^x-'"). deploy/smoke/docker_image.py loads the file with each Compose installed.
"""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "deploy" / "docker-compose.yml"
V1_TOP_LEVEL = {"version", "services", "networks", "volumes", "secrets", "configs"}


def _compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_only_top_level_keys_compose_v1_knows() -> None:
    unknown = {key for key in _compose() if key not in V1_TOP_LEVEL and not key.startswith("x-")}
    assert not unknown, f"Compose v1 (Debian 12's docker-compose) refuses the file because of {unknown}"


def test_the_worker_joins_chts_network_and_keeps_its_limits() -> None:
    compose = _compose()
    service = compose["services"]["rapidpro-worker"]
    # CHT's own compose files create the network `cht-net`; CouchDB is the service `couchdb` on it.
    assert service["networks"] == ["cht-net"]
    assert compose["networks"]["cht-net"] == {"name": "${CHT_NETWORK:-cht-net}", "external": True}
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert (service["mem_limit"], service["pids_limit"]) == ("512m", 64)
    assert sorted(service["secrets"]) == sorted(compose["secrets"])
