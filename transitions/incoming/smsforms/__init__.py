"""SMS forms: an incoming text parsed into a CHT report exactly as CHT's api parses it.

Pure logic (no I/O). Entry point: :func:`parse_sms`, returning a :class:`SmsParseResult`.

What the result fills in the ``data_record`` doc (the rest — ``type: "data_record"``,
``from``, ``tasks: []``, ``sms_message.{message, from, gateway_ref, type}`` — is built by
the caller, ``transitions/incoming/record.py``); ``SmsParseResult.doc_updates()`` and
``sms_message_updates()`` return exactly these keys:

``form``
    The form code (upper case, as configured) when the text starts with a configured form's
    code. Absent for a plain message. With ``forms_only_mode`` an unknown code is kept (and
    ``sys.form_not_found`` recorded); an empty text then has no ``form``.
``fields``
    ``{}`` for a plain message; otherwise one entry per form field that has a value, dotted
    keys (``a.b``) nested as objects. Absent values are left out (CHT's ``undefined``),
    empty Muvuku values are ``null``; a Muvuku message shorter than the form still creates
    the parent objects of dotted keys (``{"a": {}}``).
``errors``
    A list of ``{"code", "message"}`` in CHT's order: ``sys.incorrect_type`` (a present value
    of the wrong JS type), ``sys.missing_fields`` (the field keys rendered into the message,
    comma-separated), ``extra_fields``, ``sys.empty``, ``sys.form_not_found``. Messages come
    from the ``messages-*`` translation docs passed in, in the record's locale, falling back to
    English and then to the key, as CHT does. (``sys.facility_not_found`` and ``length``/``list``
    checks belong to CHT sentinel's transitions, not to parsing, and are not produced here.)
``reported_date``
    ``sent_timestamp`` read as CHT reads it (a number, a 13+ digit string, or a date text)
    when it gives a non-zero number; otherwise the receipt time passed in.
``refid``
    Only for forms with ``facility_reference``: that field's parsed value, upper-cased when
    text (``null`` when the value was empty, absent when missing).
``sms_message.form``
    The code read from the text even for unknown forms (absent when the text has none).
``sms_message.locale``
    The gateway's locale passed in (absent when None; CHT's RapidPro endpoint passes none, so
    the worker never does).

Modules: ``detect`` (form code), ``textforms`` (full and compact TextForms), ``muvuku``
(Muvuku and JavaRosa), ``fields`` (field types), ``dates`` / ``jsdate`` / ``bsdate``
(moment.js, JavaScript ``Date`` and Bikram Sambat dates), ``validate`` (required fields and
types), ``messages`` (translations),
``jscompat`` (the JavaScript semantics CHT's Node parser has), ``report`` (the entry point).
"""

from .detect import Detection, detect_form, get_form_code, is_muvuku
from .report import SmsParseResult, parse_sent_timestamp, parse_sms

__all__ = [
    "Detection",
    "SmsParseResult",
    "detect_form",
    "get_form_code",
    "is_muvuku",
    "parse_sent_timestamp",
    "parse_sms",
]
