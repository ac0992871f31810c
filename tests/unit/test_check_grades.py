"""`check`'s grading: which lines stop an install or an upgrade (transitions/commands/check_grades.py)."""

from __future__ import annotations

import pytest

from transitions.commands.check_grades import (
    FATAL,
    OK,
    PROBLEM,
    WARNING,
    Finding,
    blocks_install,
    counts,
    exit_status,
    summary,
)
from transitions.rapidpro.relay_check import PROBLEM as RELAY_PROBLEM
from transitions.rapidpro.relay_check import Judgement, relay_unused

FRESH_INSTALL = [  # a workspace whose relay flow is not imported yet, a channel asleep
    Finding(OK, "couchdb", "CouchDB 3.4.3 answers"),
    Finding(OK, "token", "RapidPro API token from file"),
    Finding(PROBLEM, "rapidpro_flow", "no active messaging flow posts to the worker"),
    Finding(WARNING, "rapidpro_channels", "an Android channel may be asleep"),
]


@pytest.mark.parametrize(("findings", "plain", "for_install"), [
    ([], 0, 0),
    ([Finding(OK, "couchdb", "")], 0, 0),
    ([Finding(WARNING, "vault", "")], 0, 0),
    (FRESH_INSTALL, 1, 0),  # a problem: check fails, an install goes on
    ([*FRESH_INSTALL, Finding(FATAL, "rapidpro", "refused the token")], 1, 1),
    ([Finding(FATAL, "couchdb", "cannot reach")], 1, 1),
])
def test_exit_status_gates_an_install_on_fatal_lines_only(findings, plain, for_install):
    assert exit_status(findings, for_install=False) == plain
    assert exit_status(findings, for_install=True) == for_install
    assert blocks_install(findings) is bool(for_install)


def test_a_line_added_without_a_grade_of_fatal_never_blocks():
    # A later line (e.g. "CHT's own sender is on: the worker stands down") added as a problem or
    # a warning does not stop an install; only FATAL does.
    for level in (OK, WARNING, PROBLEM):
        assert exit_status([Finding(level, "cht_sender", "stands down")], for_install=True) == 0


def test_the_relay_side_is_at_worst_a_problem():
    # RapidPro-side judgements use the same words and have no fatal level of their own.
    assert RELAY_PROBLEM == PROBLEM
    judged = relay_unused([Judgement(PROBLEM, "rapidpro_flow", "no flow")])
    assert [j.level for j in judged] == [WARNING]


def test_summary_counts_and_says_what_an_install_does():
    assert counts(FRESH_INSTALL) == {OK: 2, WARNING: 1, PROBLEM: 1, FATAL: 0}
    text = summary(FRESH_INSTALL)
    assert text.startswith("0 fatal, 1 problem, 1 warning, 2 ok: ")
    assert "install and upgrade go on" in text
    fatal = summary([*FRESH_INSTALL, Finding(FATAL, "couchdb", ""), Finding(FATAL, "token", "")])
    assert fatal.startswith("2 fatal, 1 problem") and "an install does not start it" in fatal
    assert summary([Finding(OK, "config", "")]).endswith(": ready")
