"""CHT's translation docs as its api reads them (transitions/cht/translations.py) and the watcher."""

from __future__ import annotations

from typing import Any

from tests.support.cht_translations import cht_translation_docs
from transitions.cht.translations import (
    EMPTY,
    Translations,
    is_translations_doc_id,
    translations_from_docs,
    valid_translations_doc,
)
from transitions.cht.translations_watcher import TranslationsWatcher
from worker.feed.changes import Change, skip_reason


def doc(code: str, generic: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"_id": f"messages-{code}", "_rev": "1-a", "type": "translations", "code": code,
            "generic": generic if generic is not None else {}, **extra}


def test_chts_shipped_docs_give_every_locale() -> None:
    translations = translations_from_docs(cht_translation_docs())
    assert {"en", "fr", "ne"} <= set(translations.by_locale)
    assert translations.lookup("sys.missing_fields", "fr") == "Champs invalides ou manquants: {{fields}}."


def test_custom_wins_over_generic() -> None:
    t = translations_from_docs([doc("fr", {"a": "générique", "b": "B"}, custom={"a": "à nous"})])
    assert t.lookup("a", "fr") == "à nous"
    assert t.lookup("b", "fr") == "B"


def test_fallback_locale_then_english_then_the_key() -> None:
    t = translations_from_docs([doc("en", {"a": "A en", "e": "E en"}), doc("fr", {"a": "A fr", "e": ""})])
    assert t.lookup("a", "fr") == "A fr"
    assert t.lookup("e", "fr") == "E en"  # an empty text counts as none
    assert t.lookup("a", "sw") == "A en"
    assert t.lookup("zzz", "fr") == "zzz"
    assert EMPTY.lookup("a", "en") == "a"


def test_old_format_values_docs_are_read() -> None:
    t = translations_from_docs([{"_id": "messages-sw", "type": "translations", "code": "sw",
                                 "values": {"a": "A sw"}}])
    assert t.lookup("a", "sw") == "A sw"


def test_key_references_are_resolved() -> None:
    t = translations_from_docs([doc("en", {"app": "CHT", "hello": "Welcome to ${app}", "bad": "${none}"})])
    assert t.lookup("hello", "en") == "Welcome to CHT"
    assert t.lookup("bad", "en") == "${none}"


def test_invalid_docs_are_ignored() -> None:
    for bad in ({"_id": "messages-x", "type": "other", "code": "x", "generic": {}},
                {"_id": "messages-x", "type": "translations", "generic": {}},
                {"_id": "messages-x", "type": "translations", "code": "x", "generic": "nope"},
                {"_id": "messages-x", "_deleted": True}):
        assert not valid_translations_doc(bad)
        assert translations_from_docs([bad]).by_locale == {}


def test_a_changed_doc_replaces_its_texts_and_a_deleted_one_removes_them() -> None:
    t = translations_from_docs([doc("fr", {"a": "un"}), doc("en", {"a": "one"})])
    t2 = t.with_doc(doc("fr", {"a": "premier"}))
    assert t2.lookup("a", "fr") == "premier" and t.lookup("a", "fr") == "un"
    t3 = t2.with_doc({"_id": "messages-fr", "_rev": "3-x", "_deleted": True})
    assert t3.lookup("a", "fr") == "one" and "fr" not in t3.by_locale
    assert t3.without("messages-en").by_locale == {}


def test_two_docs_for_one_code_the_last_id_wins() -> None:
    t = translations_from_docs([doc("fr", {"a": "second"}) | {"_id": "messages-fr2"},
                                doc("fr", {"a": "first"})])
    assert t.lookup("a", "fr") == "second"


def test_watcher_matches_messages_docs_only() -> None:
    watcher = TranslationsWatcher(lambda d: None)  # type: ignore[arg-type,return-value]
    assert watcher.matches({"_id": "messages-fr"})
    assert not watcher.matches({"_id": "settings"}) and not watcher.matches({"_id": "messagesx"})
    assert is_translations_doc_id("messages-ne") and not is_translations_doc_id(None)


async def test_watcher_puts_each_change_in_force() -> None:
    seen: list[dict[str, Any]] = []

    async def put(d: dict[str, Any]) -> None:
        seen.append(d)

    await TranslationsWatcher(put).apply(doc("fr"))
    assert seen == [doc("fr")]


def test_a_deleted_translations_doc_is_not_skipped_by_the_feed() -> None:
    tombstone = {"_id": "messages-fr", "_rev": "2-b", "_deleted": True}
    deleted = Change(seq="1", doc_id="messages-fr", doc=tombstone, deleted=True)
    assert skip_reason(deleted) is None
    assert skip_reason(Change(seq="2", doc_id="messages-fr", doc=None, deleted=True)) is None
    assert skip_reason(Change(seq="3", doc_id="report", doc=None, deleted=True)) == "deleted"


def test_docs_that_change_nothing_give_the_same_translations() -> None:
    t = translations_from_docs([doc("fr", {"a": "un"})])
    assert t.with_doc({"_id": "settings"}) is t
    assert t.with_doc(doc("fr", {"a": "un"})) is t
    assert t.with_doc({"_id": "messages-xx", "type": "nope"}) is t
    assert Translations().with_doc(doc("fr")) is not EMPTY


async def test_the_store_reads_the_messages_range_and_starts_anyway_when_refused() -> None:
    from worker.cht.translations import TranslationsStore
    from worker.couch.client import CouchError

    class Medic:
        def __init__(self, fail: bool) -> None:
            self.fail = fail
            self.params: dict[str, Any] = {}

        async def all_docs(self, **params: Any) -> dict[str, Any]:
            self.params = params
            if self.fail:
                raise CouchError("forbidden", 403)
            return {"rows": [{"id": "messages-fr", "doc": doc("fr", {"a": "un"})}, {"id": "messages-x"}]}

    store = TranslationsStore()
    medic = Medic(fail=False)
    await store.load(medic)  # type: ignore[arg-type]
    assert medic.params == {"start_key": "messages-", "end_key": "messages-\ufff0", "include_docs": True}
    assert store.current.lookup("a", "fr") == "un"
    await store.put_in_force({"_id": "messages-fr", "_rev": "2-x", "_deleted": True})
    assert store.current.by_locale == {}
    refused = TranslationsStore()
    await refused.load(Medic(fail=True))  # type: ignore[arg-type]
    assert refused.current is EMPTY
