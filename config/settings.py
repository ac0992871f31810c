"""CHT's app settings (the `settings` doc in medic) as a validated, read-only model.

Only what the worker uses is modelled; the whole `settings` object stays available as `raw`
(SMS forms need the forms and translations as CHT has them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

SETTINGS_DOC_ID = "settings"
DEFAULT_OUTGOING_SERVICE = "medic-gateway"  # CHT's default when sms.outgoing_service is absent
PHONE_VALIDATION_MODES = ("full", "partial", "none")


class SettingsError(ValueError):
    """The settings doc is broken; the message says where."""


@dataclass(frozen=True)
class Settings:
    outgoing_service: str = DEFAULT_OUTGOING_SERVICE
    rapidpro_url: str | None = None
    default_country_code: int | None = None
    phone_validation: str = "full"
    outgoing_deny_list: str = ""
    outgoing_deny_shorter_than: int | None = None
    outgoing_deny_with_alphas: bool = False
    forms_only_mode: bool = False
    locale: str = "en"
    forms: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    rev: str | None = field(default=None, compare=False)

    def summary(self) -> dict[str, Any]:
        """What operators want to see in logs and /healthz (credentials in the URL masked)."""
        return {
            "outgoing_service": self.outgoing_service,
            "rapidpro_url": without_credentials(self.rapidpro_url),
            "default_country_code": self.default_country_code,
            "forms": len(self.forms),
            "rev": self.rev,
        }


def without_credentials(url: str | None) -> str | None:
    """`url` with any `user:password@` replaced by `***@` (CHT does not forbid one there)."""
    if not url or "@" not in url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def _optional_int(value: Any, where: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise SettingsError(f"{where} must be a number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("+").isdigit():
        return int(value.strip().lstrip("+"))
    raise SettingsError(f"{where} must be a number, got {value!r}")


def _normalise_url(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SettingsError(f"sms.rapidpro.url must be a string, got {type(value).__name__}")
    url = value.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"sms.rapidpro.url must be an http(s) URL, got {value!r}")
    return url


def parse_settings(doc: Mapping[str, Any]) -> Settings:
    """The `settings` doc → Settings. Raises SettingsError with a precise reason."""
    if not isinstance(doc, Mapping):
        raise SettingsError("the settings doc is not a JSON object")
    app = doc.get("settings")
    if not isinstance(app, Mapping):
        raise SettingsError("the settings doc has no 'settings' object")

    sms = app.get("sms", {})
    if sms is None:
        sms = {}
    if not isinstance(sms, Mapping):
        raise SettingsError("settings.sms must be an object")
    service = sms.get("outgoing_service") or DEFAULT_OUTGOING_SERVICE
    if not isinstance(service, str):
        raise SettingsError("sms.outgoing_service must be a string")
    rapidpro = sms.get("rapidpro") or {}
    if not isinstance(rapidpro, Mapping):
        raise SettingsError("sms.rapidpro must be an object")

    deny_list = app.get("outgoing_deny_list") or ""
    if isinstance(deny_list, list):
        deny_list = ",".join(str(item) for item in deny_list)
    if not isinstance(deny_list, str):
        raise SettingsError("outgoing_deny_list must be a comma-separated string")

    validation = app.get("phone_validation") or "full"
    if validation not in PHONE_VALIDATION_MODES:
        raise SettingsError(f"phone_validation must be one of {', '.join(PHONE_VALIDATION_MODES)}")

    forms = app.get("forms")
    forms = {} if forms is None else forms
    if not isinstance(forms, Mapping):
        raise SettingsError("forms must be an object")

    locale = app.get("locale") or "en"
    if not isinstance(locale, str):
        raise SettingsError("locale must be a string")

    rev = doc.get("_rev")
    return Settings(
        outgoing_service=service.strip(),
        rapidpro_url=_normalise_url(rapidpro.get("url")),
        default_country_code=_optional_int(app.get("default_country_code"), "default_country_code"),
        phone_validation=validation,
        outgoing_deny_list=deny_list,
        outgoing_deny_shorter_than=_optional_int(
            app.get("outgoing_deny_shorter_than"), "outgoing_deny_shorter_than"),
        outgoing_deny_with_alphas=bool(app.get("outgoing_deny_with_alphas")),
        forms_only_mode=bool(app.get("forms_only_mode")),
        locale=locale,
        forms=forms,
        raw=app,
        rev=rev if isinstance(rev, str) else None,
    )
