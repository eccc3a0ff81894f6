"""Email templates: compiled in the sandbox, checked before any send, rendered per recipient; html to text."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from airflow_campaign.delivery.render import (
    BUILTINS,
    EmailContent,
    RenderError,
    compile_email,
    html_to_text,
)
from airflow_campaign.errors import CampaignError

FOOTER = '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
UNSUB = "https://example.com/u?d=spring&r=7&t=abc"


def content(**options: Any) -> EmailContent:
    options.setdefault("subject", "Hello {{ first_name }}")
    options.setdefault("from_addr", "news@example.com")
    if "html" not in options and "text" not in options:
        options["html"] = "<p>Hi {{ first_name }}</p>" + FOOTER
    return EmailContent(**options)


def row(**values: Any) -> dict[str, Any]:
    return {"first_name": "Zoë", "unsubscribe_url": UNSUB, **values}


# ---- compile and render ----------------------------------------------------------------------


def test_renders_subject_html_and_text_with_escaping_only_in_html() -> None:
    email = compile_email(
        content(
            subject="{{ first_name }}: {{ offer }}",
            html="<p>{{ first_name }} gets {{ offer }}</p>" + FOOTER,
            text="{{ first_name }} gets {{ offer }}\nUnsubscribe: {{ unsubscribe_url }}",
        )
    )
    subject, html, text = email.render(row(first_name="Tom & <Jerry>", offer="10%"))
    assert subject == "Tom & <Jerry>: 10%"
    assert html == (
        '<p>Tom &amp; &lt;Jerry&gt; gets 10%</p><p><a href="https://example.com/u?d=spring&amp;r=7&amp;t=abc">'
        "Unsubscribe</a></p>"
    )
    assert text == f"Tom & <Jerry> gets 10%\nUnsubscribe: {UNSUB}"
    assert email.text_source == "text"


def test_variables_include_attribute_access_and_exclude_loop_names_and_globals() -> None:
    email = compile_email(
        content(
            subject="{{ profile.first_name }} {{ range(2)|list }}",
            html="{% for item in items %}{{ item.name }}{% endfor %}{% set n = 3 %}{{ n }}" + FOOTER,
        )
    )
    assert email.variables == {"profile", "items", "unsubscribe_url"}
    assert email.parts["subject"] == {"profile"}


def test_null_column_renders_as_empty() -> None:
    subject, _, text = compile_email(content()).render(row(first_name=None))
    assert subject == "Hello"
    assert text.startswith("Hi\n\nUnsubscribe")


def test_subject_is_one_line_whatever_the_values() -> None:
    subject, _, _ = compile_email(content()).render(row(first_name="Eve\r\nBcc: victim@example.com"))
    assert subject == "Hello Eve Bcc: victim@example.com"


def test_sandbox_refuses_unsafe_access_at_render() -> None:
    email = compile_email(content(html="{{ items.append(1) }}{{ first_name.__class__ }}" + FOOTER))
    with pytest.raises(RenderError, match="html: SecurityError"):
        email.render(row(items=[]))


def test_missing_key_at_render_is_a_render_error() -> None:
    with pytest.raises(RenderError, match="subject: UndefinedError: 'first_name' is undefined"):
        compile_email(content()).render({"unsubscribe_url": UNSUB})


# ---- checks before any send -------------------------------------------------------------------


def test_check_names_each_missing_variable_its_option_and_the_columns() -> None:
    email = compile_email(content(subject="Hi {{ frist_name }}", html="{{ points }}" + FOOTER))
    email.check(["frist_name", "points", "email"])
    with pytest.raises(CampaignError) as caught:
        email.check(["first_name", "email"])
    message = str(caught.value)
    assert (
        "subject uses {{ frist_name }}, which is not a column of the population (did you mean 'first_name'?)"
        in message
    )
    assert "html uses {{ points }}" in message
    assert "Columns of the population: first_name, email" in message
    assert "built-ins: delivery, mirror_url, recipient, unsubscribe_url" in message


def test_builtins_need_no_column() -> None:
    html = "{{ recipient }} {{ delivery }} <a href='{{ mirror_url }}'>web</a>" + FOOTER
    compile_email(content(subject="Hi", html=html)).check([])
    assert {"recipient", "delivery", "mirror_url", "unsubscribe_url"} <= BUILTINS


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"subject": "  "}, "subject='  ': the subject is empty; give the email a subject."),
        (
            {"html": " \n", "text": None},
            "the body is empty; give the email an html body, a text body, or both.",
        ),
        ({"html": None, "text": ""}, "the body is empty"),
    ],
)
def test_empty_subject_or_body(options: dict[str, Any], expected: str) -> None:
    with pytest.raises(CampaignError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        compile_email(content(**options))


def test_marketing_email_needs_an_unsubscribe_link_in_each_body() -> None:
    with pytest.raises(
        CampaignError, match=r"html: a marketing email must carry an unsubscribe link"
    ) as caught:
        compile_email(content(html="<p>Buy now</p>"))
    assert '<a href="{{ unsubscribe_url }}">Unsubscribe</a>' in str(caught.value)
    assert "marketing=False" in str(caught.value)
    with pytest.raises(CampaignError, match=r"text: a marketing email must carry an unsubscribe link"):
        compile_email(content(html="<p>Buy</p>" + FOOTER, text="Buy now"))
    transactional = compile_email(content(html="<p>Your receipt</p>"), marketing=False)
    assert transactional.render(row())[2] == "Your receipt"


@pytest.mark.parametrize(
    ("option", "source", "line"),
    [
        ("subject", "Hi {{ first_name ", 1),
        ("html", "<p>ok</p>\n<p>{% if x %}never closed</p>\n" + FOOTER, 3),
        ("text", "line 1\n{{ x | nosuchfilter }}", 2),
    ],
)
def test_syntax_error_names_the_option_and_line(option: str, source: str, line: int) -> None:
    with pytest.raises(CampaignError, match=rf"^{option}: template syntax error on line {line}: "):
        compile_email(content(**{option: source}))


def test_templates_are_self_contained() -> None:
    with pytest.raises(CampaignError, match=r"html: the template refers to another template \('base.html'\)"):
        compile_email(content(html="{% extends 'base.html' %}" + FOOTER))
    with pytest.raises(CampaignError, match="html: the template refers to another template"):
        compile_email(content(html="{% include 'footer.html' %}" + FOOTER))


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("from_addr", "News <news@example.com>", "from_addr='News <news@example.com>': not an email address"),
        ("reply_to", "nobody", "reply_to='nobody': not an email address"),
        ("headers", {"Subject": "x"}, "headers: 'Subject' is set for every message by the delivery"),
        ("headers", {"X-Bad Name": "x"}, "headers: 'X-Bad Name' is not a header name"),
        ("headers", {"X-Ok": "a\r\nBcc: b@example.com"}, "a header value is one line of text"),
        ("from_name", "News\nBcc: x", "a display name is one line"),
    ],
)
def test_sender_and_header_options_are_checked(option: str, value: Any, fragment: str) -> None:
    with pytest.raises(CampaignError) as caught:
        compile_email(content(**{option: value}))
    assert fragment in str(caught.value)


# ---- html to text ---------------------------------------------------------------------------------


def test_html_to_text_structure_links_and_entities() -> None:
    html = """<html><head><title>T</title><style>p { color: red }</style></head><body>
    <!-- a comment --><!--[if mso]><table><tr><td><![endif]-->
    <h1>Spring   sale</h1><p>Dear Zo&euml;,<br>fish &amp; chips &lt;3&nbsp;!</p>
    <ul><li>one</li><li>two<ul><li>two.a</li></ul></li></ul>
    <ol><li>first</li><li>second</li></ol>
    <table><tr><td>a</td><td>b</td></tr><tr><th>c</th><td>d</td></tr></table>
    <p><a href="https://shop.example.com/?a=1&amp;b=2">Shop <b>now</b></a>,
    <a href="https://example.com/">https://example.com/</a>, <a href="mailto:hi@example.com">hi@example.com</a>,
    <a href="#top">top</a>, <a href="https://example.com/img"><img src="x.png" alt="pic"></a></p>
    <script>alert("x")</script><pre>  keep
   this</pre>
    </body></html>"""
    assert html_to_text(html) == (
        "Spring sale\n\n"
        "Dear Zoë,\nfish & chips <3 !\n\n"
        "* one\n* two\n  * two.a\n\n"
        "1. first\n2. second\n\n"
        "a b\nc d\n\n"
        "Shop now (https://shop.example.com/?a=1&b=2), https://example.com/, hi@example.com, top, "
        "https://example.com/img\n\n"
        "  keep\n   this"
    )


def test_html_to_text_of_broken_html_does_not_fail() -> None:
    assert html_to_text("a < b <p>c<b>d <a href='x'>e") == "a < b\n\ncd e"
    assert html_to_text("") == ""
    assert html_to_text("<p>unclosed <!-- comment") == "unclosed"


# each of these is converted once, at the template level: the text must be what converting each
# rendered html gives
TEMPLATE_LEVEL = [
    "<p>Hello {{ first_name }},</p><p>You have <b>{{ points }}</b> points.</p>" + FOOTER,
    "<h1>Hi {{ first_name }}</h1>{% if vip %}<p>You are <i>VIP</i>.</p>{% endif %}<p>Bye</p>" + FOOTER,
    "<p>Hello {% if first_name %}{{ first_name }}{% else %}friend{% endif %}, hi</p>" + FOOTER,
    "Intro<ul>{% for item in items %}<li>{{ item }}</li>{% endfor %}</ul>Outro" + FOOTER,
    "<p>A</p>{% for item in items %}<p>{{ item }}</p>{% endfor %}<p>C</p>" + FOOTER,
    "{% if vip %}<p>Gold</p>{% endif %}<p>{{ first_name }}</p>{% if not vip %}<p>Silver</p>{% endif %}"
    + FOOTER,
    '<p><a href="https://shop.example.com/?id={{ id }}&amp;n={{ first_name|urlencode }}">Shop</a> '
    '<a href="{{ unsubscribe_url }}">{{ unsubscribe_url }}</a></p>',
    "<table><tr><td>{{ first_name }}</td><td>{{ points }}</td></tr></table>A<br>{{ empty }}<br>B" + FOOTER,
    "<p>{{ empty }}</p><p>{{ first_name|upper }} &amp; {{ '<co>' }}</p>{# note #}" + FOOTER,
    "<div>{%- if vip -%}\n  <p>vip</p>\n{%- endif -%}</div><p>{{ first_name }}</p>" + FOOTER,
    "<ul><li>{{ empty }} top<ul><li>{{ first_name }}</li><li>{{ empty }}</li></ul></li></ul>"
    "<p>{{ empty }} line <br> {{ empty }}  start</p>" + FOOTER,
]
ROWS = [
    row(points=12, vip=True, items=["a", "b & c"], id=7, empty=""),
    row(first_name="", points=0, vip=False, items=[], id=8, empty=None),
    row(first_name="Tom & <Jerry>", points=None, vip=True, items=["x"], id=9, empty=""),
]


@pytest.mark.parametrize("html", TEMPLATE_LEVEL)
def test_text_from_the_html_template_matches_text_from_each_rendered_html(html: str) -> None:
    email = compile_email(content(html=html))
    assert email.text_source == "html-template"
    for values in ROWS:
        _, rendered, text = email.render(values)
        assert text == html_to_text(rendered or "")


@pytest.mark.parametrize(
    "html",
    [
        "<p>{{ note|safe }}</p>" + FOOTER,  # markup from the data
        '<p class="{% if vip %}gold{% endif %}">x</p>' + FOOTER,  # a tag inside an attribute
        "<ol>{% for item in items %}<li>{{ item }}</li>{% endfor %}</ol>" + FOOTER,  # numbers from the data
        "<p {{ attrs }}>x</p>" + FOOTER,  # a tag where an attribute goes
        "{% macro b(x) %}<b>{{ x }}</b>{% endmacro %}{{ b(first_name) }}" + FOOTER,
        "<style>{% if vip %}p{}{% endif %}</style><p>x</p>" + FOOTER,
    ],
)
def test_text_falls_back_to_each_rendered_html_when_the_template_cannot_be_converted(html: str) -> None:
    email = compile_email(content(html=html))
    assert email.text_source == "html-message"
    values = row(note="<b>bold</b> <i>it</i>", vip=True, items=["a", "b"], attrs='id="x"')
    _, rendered, text = email.render(values)
    assert text == html_to_text(rendered or "")
    assert text.endswith(f"Unsubscribe ({UNSUB})")
    if "note" in html:
        assert text.startswith("bold it\n\n")
    if "<ol>" in html:
        assert text.startswith("1. a\n2. b\n\n")


# random html templates put together from these pieces (statements kept balanced)
PIECES = [
    "<p>", "</p>", "<div>", "</div>", "<br>", "<b>", "</b>", " ", "\n  ", "Hello", ",", "&amp;", "&nbsp;",
    "{{ a }}", "{{ b }}", "{{ empty }}", "{{ b|upper }}", "{% if c %}", "{% else %}", "{% endif %}",
    "{% for i in items %}", "{% endfor %}", "{{ i }}", "<ul>", "</ul>", "<ol>", "</ol>", "<li>", "</li>",
    "<h2>", "</h2>", "<table>", "<tr>", "<td>", "</td>", "</tr>", "</table>", "<hr>", "<!-- c -->", "<pre>",
    "</pre>", '<a href="{{ u }}">', '<a href="https://x.example/?q={{ a|urlencode }}">', '<a href="mailto:{{ a }}">',
    '<a href="https://static.example/">', '<a href="#top">', "</a>", '<img src="{{ u }}" alt="x">',
    "<span class='{{ a }}'>", "</span>", "{% set z = 1 %}",
]  # fmt: skip
FUZZ_ROWS = [
    row(a="Zoë", b="x y", empty="", c=True, items=["1", "a b"], u="https://u.example/1"),
    row(a="", b="", empty=None, c=False, items=[], u=""),
    row(a="A & B", b="<x>", empty="", c=True, items=["q"], u="https://u"),
    row(a="Hello", b="  sp  ace\nnl ", empty="", c=True, items=[""], u="Hello"),
]


def random_template(rng: random.Random) -> str:
    out: list[str] = []
    open_: list[str] = []
    for piece in rng.choices(PIECES, k=rng.randint(1, 30)):
        if piece in ("{% if c %}", "{% for i in items %}"):
            open_.append(piece)
        elif piece == "{% else %}":
            if not (open_ and open_[-1] == "{% if c %}"):
                continue
            open_[-1] = "{% if c %}{% else %}"  # one else per if
        elif piece in ("{% endif %}", "{% endfor %}"):
            if not open_:
                continue
            piece = "{% endfor %}" if open_.pop() == "{% for i in items %}" else "{% endif %}"
        elif piece == "{{ i }}" and "{% for i in items %}" not in open_:
            continue
        out.append(piece)
    out += ["{% endfor %}" if p == "{% for i in items %}" else "{% endif %}" for p in reversed(open_)]
    return "".join(out) + FOOTER


def test_text_is_the_text_of_the_rendered_html_for_random_templates() -> None:
    rng = random.Random(20260501)
    sources: Counter[str] = Counter()
    for _ in range(300):
        html = random_template(rng)
        email = compile_email(content(html=html))
        sources[email.text_source] += 1
        for values in FUZZ_ROWS:
            _, rendered, text = email.render(values)
            assert text == html_to_text(rendered or ""), (html, values)
    assert sources["html-template"] > 150  # most random templates are converted once
