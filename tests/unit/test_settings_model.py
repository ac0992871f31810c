import pytest

from config.settings import DEFAULT_OUTGOING_SERVICE, Settings, SettingsError, parse_settings
from transitions.cht.settings_watcher import decide


def doc(settings, rev="1-a"):
    return {"_id": "settings", "_rev": rev, "settings": settings}


def test_full_settings_doc():
    settings = parse_settings(doc({
        "sms": {"outgoing_service": "rapidpro", "rapidpro": {"url": "https://textit.com/"}},
        "default_country_code": 254, "phone_validation": "partial",
        "outgoing_deny_list": "800,SAFARICOM", "outgoing_deny_shorter_than": 6,
        "outgoing_deny_with_alphas": True, "locale": "sw", "forms_only_mode": True,
        "forms": {"FORM": {"meta": {"code": "FORM"}}},
    }))
    assert settings.outgoing_service == "rapidpro"
    assert settings.rapidpro_url == "https://textit.com"
    assert settings.default_country_code == 254
    assert settings.phone_validation == "partial"
    assert settings.outgoing_deny_list == "800,SAFARICOM"
    assert settings.outgoing_deny_shorter_than == 6
    assert settings.outgoing_deny_with_alphas is True
    assert settings.forms_only_mode is True
    assert settings.locale == "sw"
    assert list(settings.forms) == ["FORM"]
    assert settings.rev == "1-a"


def test_cht_defaults_when_keys_are_absent():
    settings = parse_settings(doc({}))
    assert settings.outgoing_service == DEFAULT_OUTGOING_SERVICE
    assert settings.rapidpro_url is None
    assert settings.default_country_code is None
    assert settings.locale == "en"


def test_country_code_as_string_is_accepted():
    assert parse_settings(doc({"default_country_code": "+255"})).default_country_code == 255


@pytest.mark.parametrize(
    ("broken", "fragment"),
    [
        ({"_id": "settings"}, "no 'settings' object"),
        (doc([]), "no 'settings' object"),
        (doc({"sms": "rapidpro"}), "settings.sms"),
        (doc({"sms": {"outgoing_service": 3}}), "outgoing_service"),
        (doc({"sms": {"rapidpro": {"url": "textit.com"}}}), "sms.rapidpro.url"),
        (doc({"sms": {"rapidpro": {"url": 5}}}), "sms.rapidpro.url"),
        (doc({"default_country_code": "kenya"}), "default_country_code"),
        (doc({"default_country_code": True}), "default_country_code"),
        (doc({"phone_validation": "strict"}), "phone_validation"),
        (doc({"forms": []}), "forms"),
    ],
)
def test_broken_settings_are_refused_with_a_reason(broken, fragment):
    with pytest.raises(SettingsError) as error:
        parse_settings(broken)
    assert fragment in str(error.value)


def test_watcher_decision_accepts_new_revision():
    current = Settings(rev="1-a")
    decision = decide(doc({"sms": {"outgoing_service": "rapidpro"}}, rev="2-b"), current)
    assert decision.error is None
    assert decision.settings is not None and decision.settings.outgoing_service == "rapidpro"


def test_watcher_decision_ignores_the_revision_in_force():
    decision = decide(doc({}, rev="1-a"), Settings(rev="1-a"))
    assert decision.settings is None and decision.error is None


def test_watcher_decision_refuses_broken_doc_and_keeps_nothing_new():
    decision = decide(doc({"sms": []}, rev="3-c"), Settings(rev="2-b"))
    assert decision.settings is None
    assert decision.error is not None and "settings.sms" in decision.error


def test_the_summary_never_shows_credentials_in_the_rapidpro_url():
    from config.settings import without_credentials

    assert without_credentials("https://user:p4ss@rapidpro.example/x?y=1") == "https://***@rapidpro.example/x?y=1"
    assert without_credentials("https://rapidpro.example/a@b") == "https://rapidpro.example/a@b"
    assert without_credentials(None) is None
