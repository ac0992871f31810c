import io
import json
import logging
import warnings

import structlog

from worker.logs import configure_logging, get_logger


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_structlog_and_stdlib_and_warnings_all_render_as_json_lines():
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    get_logger("t").info("hello", doc_id="d1", seq="5-x")
    logging.getLogger("aiohttp.server").error("stdlib says %s", "hi")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("careful", RuntimeWarning, stacklevel=1)
    events = lines(stream)
    assert [e["event"] for e in events][:2] == ["hello", "stdlib says hi"]
    assert events[0]["doc_id"] == "d1" and events[0]["seq"] == "5-x"
    assert events[0]["level"] == "info" and "timestamp" in events[0]
    assert "careful" in events[2]["event"]


def test_contextvars_are_merged():
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    with structlog.contextvars.bound_contextvars(doc_id="abc"):
        get_logger("t").info("inside")
    get_logger("t").info("outside")
    inside, outside = lines(stream)
    assert inside["doc_id"] == "abc"
    assert "doc_id" not in outside


def test_credentials_are_redacted_everywhere():
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    get_logger("t").info("oops", url="http://admin:pa55@host:5984/medic", token="abc123",
                         error="GET http://u:pa55@h/x failed")
    logging.getLogger("urllib3").warning("connecting to https://u:pa55@h/")
    text = stream.getvalue()
    assert "pa55" not in text and "abc123" not in text
    assert "http://***:***@host:5984/medic" in text


def test_level_filters_debug():
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    get_logger("t").debug("hidden")
    get_logger("t").info("shown")
    assert [e["event"] for e in lines(stream)] == ["shown"]


def test_exceptions_are_one_line():
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    try:
        raise ValueError("bad")
    except ValueError:
        get_logger("t").exception("failed")
    assert len(stream.getvalue().splitlines()) == 1
    assert "ValueError" in lines(stream)[0]["exception"]


def test_phone_numbers_inside_free_text_are_masked():
    from worker.logs import redact

    event = redact(None, "warning", {"event": "message_rejected",
                                     "error": "400: Invalid URN: tel:+254712345678. Ensure phone numbers..."})
    assert event["error"] == "400: Invalid URN: tel:+2547******78. Ensure phone numbers..."
    # Not a phone number: seqs, ids, times.
    # Literal texts that merely contain digit runs: the point is that they are not masked as phones.
    for text in ("4-g1AAAA123456789", "broadcast 123456789", "2026-11-30T20:51:58+00:00"):
        assert redact(None, "info", {"event": "x", "detail": text})["detail"] == text
