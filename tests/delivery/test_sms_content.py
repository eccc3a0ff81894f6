"""SMS content: GSM-7 or UCS-2, parts at the limits, transliteration, the template, phone numbers."""

from __future__ import annotations

import math

import gsm0338  # noqa: F401  (the codec the packing is checked against)
import phonenumbers
import pytest

from airflow_campaign.delivery.sms import CompiledSms, normalise, parts_by_character, parts_of, transliterate
from airflow_campaign.errors import CampaignError


@pytest.mark.parametrize(
    ("text", "encoding", "parts"),
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("é" * 160, "GSM-7", 1),  # é is in the GSM basic set
        ("€" * 80, "GSM-7", 1),  # two septets each: 160
        ("€" * 81, "GSM-7", 2),
        ("ç" * 70, "UCS-2", 1),  # not GSM: the whole message goes as UCS-2
        ("ç" * 71, "UCS-2", 2),
        ("ç" * 134, "UCS-2", 2),
        ("ç" * 135, "UCS-2", 3),
        ("a" * 69 + "😀", "UCS-2", 2),  # a surrogate pair: 71 code units
        ("a" * 68 + "😀", "UCS-2", 1),
        ("", "GSM-7", 1),
    ],
)
def test_parts_at_the_limits(text, encoding, parts):
    got = parts_of(text)
    assert (got.encoding, got.parts) == (encoding, parts)


def test_an_escape_is_never_split_from_its_character():
    # 152 septets then a € (2): the second part starts with the € rather than splitting it
    text = "a" * 152 + "€" + "a" * 10
    assert parts_of(text).units == 164
    assert parts_of(text).parts == 2
    text = "a" * 152 + "€" * 77  # 152 + 154 = 306 septets, but the escape pairs do not fit 2 x 153
    assert parts_of(text).units == 306
    assert parts_of(text).parts == 3


@pytest.mark.parametrize(
    "text",
    ["Hello {name}, 10€ off [today] ~ only | ^ \\", "Prix: 5 € — «offre» ’ok’", "Zoë Ørsted, ça va? ñ ß"],
)
def test_septet_count_agrees_with_the_gsm0338_codec(text):
    """The packing's unit count is the codec's encoded length (escape + character = two)."""
    for candidate in (text, transliterate(text)):
        try:
            encoded = candidate.encode("gsm03.38")
        except UnicodeEncodeError:
            assert parts_of(candidate).encoding == "UCS-2"
            continue
        got = parts_of(candidate)
        assert got.encoding == "GSM-7" and got.units == len(encoded)
        expected = 1 if len(encoded) <= 160 else math.ceil(len(encoded) / 153)
        assert got.parts >= expected


def test_the_fast_count_agrees_with_the_count_by_character():
    """parts_of counts the usual texts on their set of characters: it must give what the count
    character by character gives, at every length around the part limits, for GSM-7 texts with
    and without extension characters, UCS-2 texts and texts beyond the BMP."""
    import random

    rng = random.Random(7)
    pools = [
        "abcdefghijklmnopqrstuvwxyz ABC0123456789.,!?éèùÅÑ@£$¥",
        "abc def €[]{}^~|\\ xyz",
        "abc def привет 你好 ç",
        "abc €😀 Δ",
    ]
    checked = 0
    for pool in pools:
        for length in [*range(0, 12), *range(60, 80), *range(130, 170), *range(300, 320), 1000]:
            for _ in range(3):
                text = "".join(rng.choice(pool) for _ in range(length))
                assert parts_of(text) == parts_by_character(text), text
                checked += 1
    assert checked > 1000


def test_transliteration_keeps_gsm_letters_and_spells_the_rest():
    assert transliterate("Zoë, ça coûte 5 € — «promo» ’ok’…") == "Zoe, Ça coute 5 € - \"promo\" 'ok'..."
    assert transliterate("é è ù ì ò Ø å Ä Ö Ñ Ü ß") == "é è ù ì ò Ø å Ä Ö Ñ Ü ß"
    assert transliterate("日本") == "??"
    assert parts_of(transliterate("ç" * 100)).encoding == "GSM-7"


def test_the_template_renders_with_its_footer_and_checks_its_columns():
    compiled = CompiledSms("Hi {{ first_name }}, {{ points }} pts", footer="STOP 36111", transliterate=False)
    assert compiled.render({"first_name": "Zoë", "points": 12}) == "Hi Zoë, 12 pts\nSTOP 36111"
    with pytest.raises(CampaignError, match=r"text uses \{\{ points \}\}.*did you mean 'point'"):
        compiled.check(["first_name", "point"])
    with pytest.raises(CampaignError, match="template syntax error"):
        CompiledSms("Hi {{ first_name ", footer=None, transliterate=False)
    with pytest.raises(CampaignError, match="the footer alone takes 2 parts"):
        CompiledSms("x", footer="STOP " * 40, transliterate=False)


@pytest.mark.parametrize(
    ("raw", "region", "e164", "reason"),
    [
        ("06 12 34 56 78", "FR", "+33612345678", None),
        ("+33 6 12 34 56 78", None, "+33612345678", None),
        ("0033-612345678", "FR", "+33612345678", None),
        ("(202) 555-0143", "US", "+12025550143", None),
        ("06 12 34 56 78", None, None, "no country code and no region"),
        ("06 12", "FR", None, "too short"),
        ("hello", "FR", None, "not a phone number"),
        ("+999 123 456 789", None, None, "unknown country code"),
    ],
)
def test_numbers_are_read_as_libphonenumber_reads_them(raw, region, e164, reason):
    assert normalise(raw, region) == (e164, reason)
    if e164:  # the same answer as the library called directly
        number = phonenumbers.parse(raw, region)
        assert phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) == e164
