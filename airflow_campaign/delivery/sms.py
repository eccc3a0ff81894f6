"""SMS content: the text template, GSM-7 or UCS-2, parts, transliteration, and phone numbers.

**Encoding and parts.** A message whose every character is in the GSM 03.38 alphabet (its basic
set, or its extension ``€[]{}^~|\\`` and form feed, which take two septets: an escape and the
character) goes as GSM-7: one part holds 160 septets, and a longer message is split into parts
of 153 (the rest carries the concatenation header), never splitting an escape from its
character. Any other character makes the whole message UCS-2: 70 UTF-16 code units in one
part, 67 per part beyond, never splitting a surrogate pair. The codec is the ``gsm0338``
package's; the packing is below.

**Transliteration** (``transliterate=True``) replaces each character outside GSM 03.38 by its
closest GSM-7 spelling (``ç`` → ``c``, ``’`` → ``'``, ``—`` → ``-``), keeping the accented
letters GSM-7 has (``é è ù ì ò Ç Ø ø Å å Ä Ö Ñ Ü ß``); a character with no spelling becomes ``?``.

**Phone numbers** are normalised to E.164 by the ``phonenumbers`` package (Google's
libphonenumber) once per distinct raw value and region, and the result is kept in
``campaign.phone_numbers`` (see :func:`normalise_into_cache`): a delivery to a million profiles
parses only the numbers no earlier delivery has seen.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from airflow_campaign.channels.base import Envelope
from airflow_campaign.errors import CampaignError
from airflow_campaign.extras import needs

Encoding = Literal["GSM-7", "UCS-2"]
MessageType = Literal["promotional", "transactional"]

GSM_SINGLE, GSM_MULTI = 160, 153  # septets in one part, and per part of a longer message
UCS2_SINGLE, UCS2_MULTI = 70, 67  # UTF-16 code units
MAX_PARTS_LIMIT = 10  # providers refuse longer messages (SNS: 1,600 bytes)

#: Built-in template variables of an SMS (besides the population's columns).
SMS_BUILTINS = frozenset({"recipient", "delivery"})

# characters outside GSM 03.38 and their GSM-7 spelling (tried before the Unicode decomposition)
_SPELLINGS = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "`": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"', "\u2033": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "\u2026": "...", "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u2002": " ", "\u2003": " ",
    "\t": " ", "\u00b7": ".", "\u2022": "*", "\u00d7": "x", "\u00f7": "/", "\u2122": "TM",
    "\u00a9": "(c)", "\u00ae": "(R)", "\u0153": "oe", "\u0152": "OE", "\u00e6": "\u00e6", "\u00f0": "d",
    "\u00d0": "D", "\u00fe": "th", "\u00de": "Th", "\u0142": "l", "\u0141": "L", "\u0111": "d", "\u0110": "D",
    "\u00e7": "\u00c7",  # GSM-7 has only the capital; phones show it for both
}  # fmt: skip


_GSM_CACHE: dict[str, int | None] = {}


def _septets_of(char: str) -> int | None:
    size = _GSM_CACHE.get(char, 0)
    if size == 0:
        with needs("sms", "an SMS delivery"):
            import gsm0338  # noqa: F401  (registers the codec)
        try:
            size = len(char.encode("gsm03.38"))
        except UnicodeEncodeError:
            size = None
        _GSM_CACHE[char] = size
    return size


@dataclass(frozen=True)
class Parts:
    """How a text goes: its encoding, its length in that encoding's units, and its parts."""

    encoding: Encoding
    units: int
    parts: int


def _pack(sizes: Iterable[int], single: int, multi: int) -> tuple[int, int]:
    """(units, parts): one part when everything fits in ``single``, else parts of ``multi``
    units, each unit group (an escape and its character, a surrogate pair) kept whole."""
    sizes = list(sizes)
    units = sum(sizes)
    if units <= single:
        return units, 1
    parts, used = 1, 0
    for size in sizes:
        if used + size > multi:
            parts += 1
            used = 0
        used += size
    return units, parts


_ALPHABET: tuple[frozenset[str], frozenset[str]] | None = None  # (one septet, one or two)


def _alphabet() -> tuple[frozenset[str], frozenset[str]]:
    """GSM 03.38's characters of one septet, and all of its characters (one septet or two: an
    escape and the character), read once from the codec over the whole BMP (about 0.15 s)."""
    global _ALPHABET
    if _ALPHABET is None:
        single, double = set(), set()
        for code in range(0x10000):
            if 0xD800 <= code <= 0xDFFF:
                continue
            size = _septets_of(chr(code))
            if size == 1:
                single.add(chr(code))
            elif size == 2:
                double.add(chr(code))
        _ALPHABET = frozenset(single), frozenset(single | double)
    return _ALPHABET


def parts_of(text: str) -> Parts:
    """The encoding and number of parts of ``text`` as an SMS.

    The usual cases are counted on the set of the text's characters (every character one unit,
    or a one-part GSM-7 text with extension characters); the rest go character by character
    (:func:`parts_by_character`, which the tests also compare with the fast cases)."""
    single, gsm = _alphabet()
    chars = set(text)
    if chars <= single:
        units = len(text)
        return Parts("GSM-7", units, 1 if units <= GSM_SINGLE else -(-units // GSM_MULTI))
    if chars <= gsm:
        units = len(text) + sum(text.count(c) for c in chars - single)
        if units <= GSM_SINGLE:
            return Parts("GSM-7", units, 1)
    elif max(chars) <= "\uffff":
        units = len(text)
        return Parts("UCS-2", units, 1 if units <= UCS2_SINGLE else -(-units // UCS2_MULTI))
    return parts_by_character(text)


def parts_by_character(text: str) -> Parts:
    """:func:`parts_of`, one character at a time."""
    sizes = []
    for char in text:
        size = _septets_of(char)
        if size is None:
            break
        sizes.append(size)
    else:
        units, parts = _pack(sizes, GSM_SINGLE, GSM_MULTI)
        return Parts("GSM-7", units, parts)
    # UCS-2 (UTF-16 on the wire): two code units for a character beyond the BMP
    units, parts = _pack((2 if ord(c) > 0xFFFF else 1 for c in text), UCS2_SINGLE, UCS2_MULTI)
    return Parts("UCS-2", units, parts)


def transliterate(text: str) -> str:
    """``text`` spelled in GSM 03.38 only (see the module's docstring)."""
    out = []
    for char in text:
        if _septets_of(char) is not None:
            out.append(char)
            continue
        spelled = _SPELLINGS.get(char)
        if spelled is None:
            decomposed = unicodedata.normalize("NFKD", char)
            spelled = "".join(c for c in decomposed if not unicodedata.combining(c))
        if not spelled or any(_septets_of(c) is None for c in spelled):
            spelled = "?"
        out.append(spelled)
    return "".join(out)


# ---- the text template --------------------------------------------------------------------------


class CompiledSms:
    """An SMS text template compiled once; ``render`` fills it for one recipient.

    The text is Jinja in the sandbox, as an email's text part (not autoescaped); whitespace runs
    are kept as written. ``footer`` is added after a new line (the STOP notice).
    """

    def __init__(self, text: str, *, footer: str | None, transliterate: bool, option: str = "text") -> None:
        from airflow_campaign.delivery.render import _TEXT_ENV, _compile, _variables

        if not isinstance(text, str) or not text.strip():
            raise CampaignError(
                f"{option}: give the message text (a Jinja template), e.g. 'Hi {{{{ first_name }}}}'."
            )
        template, ast = _compile(_TEXT_ENV, text, "text")
        self._template = template
        self._globals = dict(template.globals)
        self.variables = _variables(ast)
        self.footer = footer
        self.transliterate = transliterate
        if footer is not None:
            footer_parts = parts_of(footer if not transliterate else globals()["transliterate"](footer))
            if footer_parts.parts > 1:
                raise CampaignError(
                    f"stop_footer={footer!r}: the footer alone takes {footer_parts.parts} parts; keep it short "
                    "(e.g. 'STOP 36111')."
                )

    def check(self, columns: Iterable[str]) -> None:
        """Raise naming every variable the text uses that is neither a column nor a built-in."""
        import difflib

        available = list(dict.fromkeys(columns))
        missing = sorted(self.variables - set(available) - SMS_BUILTINS)
        if missing:
            hints = []
            for name in missing:
                close = difflib.get_close_matches(name, [*available, *sorted(SMS_BUILTINS)], n=1)
                hints.append(f"{{{{ {name} }}}}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise CampaignError(
                f"text uses {', '.join(hints)}, not a column of the population. Columns of the population: "
                f"{', '.join(available) or '(none)'}; built-ins: {', '.join(sorted(SMS_BUILTINS))}. Add the "
                "column to the population or change the template."
            )

    def render(self, row: Mapping[str, Any]) -> str:
        """The message for ``row``: the text, the footer, transliterated when asked."""
        from airflow_campaign.delivery.render import _run

        text = _run(self._template, {**self._globals, **row}, "text").strip()
        if self.footer:
            text = f"{text}\n{self.footer}" if text else self.footer
        return transliterate(text) if self.transliterate else text


# ---- the composer -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmsSettings:
    """What every message of one SMS delivery carries besides its text."""

    sender_id: str | None = None
    origination_number: str | None = None
    message_type: MessageType = "promotional"
    max_parts: int = 3


def too_long(parts: Parts, max_parts: int) -> str:
    """The exclusion reason of a message over ``max_parts``."""
    return f"message too long ({parts.parts} parts > max_parts={max_parts})"


class SmsComposer:
    """Renders each row and packs it as the JSON payload the SMS channels read.

    The payload: ``{"to", "text", "encoding", "parts", "sender_id", "origination_number",
    "message_type", "delivery"}``; the outbox writes it as is, SNS publishes ``text`` to ``to``
    with the rest as SMS attributes. A message over ``max_parts`` is refused with its reason
    (the prepare step has already excluded those; this is the last check).
    """

    def __init__(self, compiled: CompiledSms, settings: SmsSettings, delivery: str) -> None:
        self.compiled = compiled
        self.settings = settings
        self.delivery = delivery

    def compose(self, rows: Sequence[dict[str, Any]]) -> tuple[list[Envelope], list[tuple[int, str]]]:
        from airflow_campaign.delivery.email import LOG_ID, RECIPIENT, SEND_TO
        from airflow_campaign.delivery.render import RenderError

        envelopes: list[Envelope] = []
        refused: list[tuple[int, str]] = []
        settings, render, dumps = self.settings, self.compiled.render, json.dumps
        for row in rows:
            log_id = int(row[LOG_ID])
            to = row[SEND_TO]
            if row.get(RECIPIENT) is None:
                raise RenderError(
                    f"ledger row {log_id}: no recipient row to personalise the message with; nothing is sent "
                    "without its own data."
                )
            try:
                text = render({**row, "recipient": to, "delivery": self.delivery})
            except CampaignError as exc:
                raise RenderError(
                    f"{exc} (recipient {str(row[RECIPIENT])[:100]!r}, ledger row {log_id}). Nothing more is sent: "
                    "fix the template and clear the task; the recipients not sent yet are still pending."
                ) from exc
            parts = parts_of(text)
            if parts.parts > settings.max_parts:
                refused.append((log_id, too_long(parts, settings.max_parts)))
                continue
            payload = {
                "to": to,
                "text": text,
                "encoding": parts.encoding,
                "parts": parts.parts,
                "sender_id": settings.sender_id,
                "origination_number": settings.origination_number,
                "message_type": settings.message_type,
                "delivery": self.delivery,
            }
            envelopes.append(Envelope(log_id, to, dumps(payload, ensure_ascii=False).encode()))
        return envelopes, refused


# ---- phone numbers ------------------------------------------------------------------------------


def normalise(raw: str, region: str | None) -> tuple[str | None, str | None]:
    """``(e164, None)`` for a valid number, ``(None, reason)`` otherwise (libphonenumber's verdict).

    ``region`` (ISO 3166 alpha-2, e.g. ``"FR"``) reads national numbers (``06 12 34 56 78``);
    without one, only international numbers (``+33…``, ``0033…`` is national) are understood.
    """
    with needs("sms", "an SMS delivery"):
        import phonenumbers
    from phonenumbers import NumberParseException

    try:
        number = phonenumbers.parse(raw, (region or "").upper() or None)
    except NumberParseException as exc:
        reasons = {
            NumberParseException.INVALID_COUNTRY_CODE: "unknown country code"
            if raw.strip().startswith("+") or region
            else "no country code and no region",
            NumberParseException.NOT_A_NUMBER: "not a phone number",
            NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
            NumberParseException.TOO_SHORT_NSN: "too short",
            NumberParseException.TOO_LONG: "too long",
        }
        return None, reasons.get(exc.error_type, "not a phone number")
    if not phonenumbers.is_valid_number(number):
        possible = phonenumbers.is_possible_number_with_reason(number)
        reason = {
            phonenumbers.ValidationResult.TOO_SHORT: "too short",
            phonenumbers.ValidationResult.TOO_LONG: "too long",
            phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
        }.get(possible, "not a valid number for its country")
        return None, reason
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), None


def normalised_rows(pairs: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str, str | None, str | None]]:
    """``(raw, region, e164, reason)`` for each distinct ``(raw, region)``."""
    for raw, region in pairs:
        e164, reason = normalise(raw, region or None)
        yield raw, region, e164, reason


def check_region(option: str, region: Any) -> str | None:
    """``region`` as an upper-case region code phonenumbers knows, or a CampaignError."""
    if region is None:
        return None
    with needs("sms", f"{option}={region!r}"):
        import phonenumbers
    code = str(region).strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise CampaignError(
            f"{option}={region!r}: not a region code phonenumbers knows; give an ISO 3166 alpha-2 code such "
            "as 'FR', 'US' or 'GB'."
        )
    return code
