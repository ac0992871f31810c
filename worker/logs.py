"""Structured logging: every line the process prints is one event rendered by structlog.

stdlib loggers (aiohttp, asyncio, the CouchDB SDK) and `warnings` go through the same
renderer, so a log shipper never meets a stray text line. A redaction step removes
credentials from any value, as a last line of defence.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from transitions.cht.phone import mask_phone

# user:password@ inside any URL-looking text
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]+:[^/@\s]+@")
_SECRET_KEYS = {"password", "token", "secret", "authorization", "api_key", "incoming_key", "couch_secret"}


# A phone number inside free text (RapidPro's "Invalid URN: tel:+254..." errors, say): a `tel:`
# URN, or + and 7-15 digits. Fields meant to hold a number are masked where they are logged.
_PHONE_IN_TEXT = re.compile(r"(?<=tel:)\+?\d{5,15}(?!\d)|(?<![\w+])\+\d{7,15}(?!\d)")


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        value = _URL_CREDENTIALS.sub(r"\g<scheme>***:***@", value)
        return _PHONE_IN_TEXT.sub(lambda m: mask_phone(m.group(0)), value)
    return value


def redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if key.lower() in _SECRET_KEYS and value is not None:
            event[key] = "***"
        else:
            event[key] = _redact_value(value)
    return event


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        redact,
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if fmt == "json" else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party loggers are chatty at debug; keep them at warning unless asked.
    for name in ("urllib3", "ibm_cloud_sdk_core", "ibm-cloud-sdk-core", "aiohttp.access", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING if level != "debug" else logging.INFO)
    # Off then on: captureWarnings(True) is a no-op when an earlier call's hook was replaced since
    # (a reconfiguration, a test runner), and warnings would then bypass our renderer.
    logging.captureWarnings(False)
    logging.captureWarnings(True)

    structlog.configure(
        # Level first: a debug event on a hot path (every change) then costs a level check, not
        # a timestamp and a redaction pass that the handler would throw away.
        processors=[structlog.stdlib.filter_by_level, *shared,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _identity(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
