"""The import contracts in pyproject.toml ([tool.importlinter]) catch what they promise: each planted
bad import in a copy of the product fails `lint-imports` and names the contract it breaks.
(`./scripts/test` runs `lint-imports` on the project itself.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("worker", "transitions", "config", "playground", "tests")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-logo", "--no-cache"], cwd=root, text=True,
                          capture_output=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project's packages and pyproject.toml, without the test server's npm tree."""
    copy = tmp_path_factory.mktemp("tree")
    shutil.copy(ROOT / "pyproject.toml", copy)
    ignore = shutil.ignore_patterns("node_modules", "__pycache__")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, copy / name, ignore=ignore)
    return copy


@pytest.fixture
def tree(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "tree"
    shutil.copytree(pristine, copy)
    return copy


def plant(root: Path, module: str, text: str) -> None:
    path = root / module
    path.write_text(path.read_text() + "\n" + text)


def test_the_copy_keeps_every_contract(pristine: Path) -> None:
    result = lint(pristine)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "text", "contract"), [
    ("config/env.py", "from transitions.cht.states import apply_state\n",
     "Layers: worker above transitions above config"),
    ("transitions/cht/states.py", "import worker.logs\n", "Layers: worker above transitions above config"),
    ("worker/feed/follower.py", "from worker.outgoing import sender\n",
     "worker/feed/ may import couch (and the shared modules)"),
    ("worker/http/metrics.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                               "    from worker.app import Worker\n",
     "worker/http/ may import couch, feed, incoming"),
    ("worker/couch/client.py", "def _f():\n    from playground import fake_rapidpro\n",
     "The product never imports the playground or the tests"),
    ("worker/logs.py", "from worker.couch import client\n", "worker's shared modules import only shared"),
    ("worker/couch/bulk.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                             "    from worker.rapidpro import errors\n",
     "worker/couch/ may import no other capability"),
])
def test_a_planted_bad_import_breaks_its_contract(tree: Path, module: str, text: str, contract: str) -> None:
    plant(tree, module, text)
    result = lint(tree)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert len(broken) >= 1 and any(line.startswith(contract) for line in broken), result.stdout


def test_a_planted_cycle_between_siblings_is_found(tree: Path) -> None:
    plant(tree, "transitions/cht/timestamps.py", "from transitions.cht import states\n")
    plant(tree, "transitions/cht/states.py", "from transitions.cht import timestamps\n")
    result = lint(tree)
    assert result.returncode != 0
    assert "No import cycle between sibling modules or packages of the product BROKEN" in result.stdout
