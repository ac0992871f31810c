"""The layers and the capability packages' allowed imports (tests/support/layers.py), on the
project's source and on planted bad imports."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.layers import all_imports, cycles, violations

ROOT = Path(__file__).resolve().parents[2]


def test_the_project_keeps_its_layers_and_has_no_import_cycle():
    imports = all_imports(ROOT)
    assert len({imp.module for imp in imports if imp.module.startswith("worker.")}) > 40
    assert violations(imports) == []
    assert cycles(imports) == []


def plant(tmp_path: Path, files: dict[str, str]) -> Path:
    """A small tree shaped like the project: the clean modules plus `files`."""
    base = {
        "config/__init__.py": "", "config/env.py": "",
        "transitions/__init__.py": "", "transitions/status.py": "from config.env import X\n",
        "worker/__init__.py": "", "worker/logs.py": "", "worker/app.py": "",
        "worker/cli.py": "from worker.app import run_worker\n",
        "worker/couch/__init__.py": "", "worker/couch/client.py": "from worker.logs import get_logger\n",
        "worker/feed/__init__.py": "",
        "worker/feed/follower.py": "from worker.couch.client import Database\n",
        "worker/outgoing/__init__.py": "", "worker/outgoing/sender.py": "from worker.feed import follower\n",
        "worker/http/__init__.py": "", "worker/http/metrics.py": "",
        "playground/__init__.py": "", "playground/standin.py": "from worker.logs import get_logger\n",
    }
    for name, text in {**base, **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_clean_planted_tree_passes(tmp_path):
    imports = all_imports(plant(tmp_path, {}))
    assert violations(imports) == [] and cycles(imports) == []


@pytest.mark.parametrize(("files", "expected"), [
    ({"config/env.py": "from transitions.status import Plan\n"}, "config/ may not import transitions/"),
    ({"transitions/status.py": "import worker.logs\n"}, "transitions/ may not import worker/"),
    ({"worker/feed/follower.py": "from worker.outgoing.sender import OutgoingSender\n"},
     "worker/feed/ may import only couch"),
    ({"worker/http/metrics.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                "    from worker.app import Worker\n"}, "only the command line's entry"),
    ({"worker/couch/client.py": "def f():\n    from playground import standin\n"},
     "the product never imports playground/"),
    ({"worker/logs.py": "from worker.couch import client\n"}, "a shared module imports only shared"),
])
def test_a_planted_bad_import_is_named(tmp_path, files, expected):
    found = violations(all_imports(plant(tmp_path, files)))
    assert len(found) == 1 and expected in found[0], found


def test_a_planted_cycle_is_found(tmp_path):
    imports = all_imports(plant(tmp_path, {
        "worker/couch/client.py": "from worker.couch.bulk import BulkWriter\n",
        "worker/couch/bulk.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                "    from worker.couch.client import Database\n"}))
    assert cycles(imports) == [["worker.couch.bulk", "worker.couch.client"]]
