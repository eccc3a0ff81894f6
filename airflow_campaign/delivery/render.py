"""Email content: Jinja templates compiled once in a sandbox, checked before any send, rendered per recipient.

``compile_email(EmailContent(...))`` compiles the subject, the html and the text templates in
Jinja's immutable sandbox, finds the variables they use and runs the content checks
(syntax, empty parts, the unsubscribe link of a marketing email). ``CompiledEmail.check``
compares the variables with the population's columns; ``CompiledEmail.render`` fills the
templates for one recipient. When no text template is given, the text part is derived from the
html: once, from the html *template*, when the template allows it; else from each rendered html.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from html import unescape
from typing import Any, Literal

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.environment import Template
from jinja2.sandbox import ImmutableSandboxedEnvironment

from airflow_campaign.delivery.mime import check_address, check_headers
from airflow_campaign.errors import CampaignError

# Variables every recipient has on top of the population's columns, filled by the delivery engine.
BUILTINS = frozenset({"unsubscribe_url", "mirror_url", "recipient", "delivery"})

Part = Literal["subject", "html", "text"]
TextSource = Literal["text", "html-template", "html-message"]


class RenderError(CampaignError):
    """One recipient's row could not be rendered (a sandbox refusal, a missing key, a filter error)."""


@dataclass(frozen=True, kw_only=True)
class EmailContent:
    """What an email says and who it is from.

    Every template is Jinja, rendered in a sandbox with the recipient's row: the population's
    columns (``{{ first_name }}``, ``{{ profile.city }}`` for a json column) and the built-ins
    ``unsubscribe_url``, ``mirror_url``, ``recipient`` (the address) and ``delivery`` (its name).
    A NULL column renders as an empty string; a variable that is not a column is an error
    before anything is sent.

    :param subject: the subject line (a template; rendered on one line).
    :param from_addr: the sender's address, ``news@example.com``.
    :param html: the html body (a template, autoescaped). At least one of html and text is needed.
    :param text: the plain-text body (a template). Derived from the html when left out.
    :param from_name: the sender's display name, ``Example News``.
    :param reply_to: the Reply-To address, when replies should go elsewhere.
    :param headers: extra headers carried unchanged by every message, ``{"X-Campaign": "spring"}``.
    """

    subject: str
    from_addr: str
    html: str | None = None
    text: str | None = None
    from_name: str | None = None
    reply_to: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def _finalize(value: Any) -> Any:
    """``{{ column }}`` of a NULL renders as nothing, not as ``None``."""
    return "" if value is None else value


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        autoescape=autoescape, undefined=StrictUndefined, finalize=_finalize, keep_trailing_newline=True
    )


_HTML_ENV = _environment(True)
_TEXT_ENV = _environment(False)


class CompiledEmail:
    """An email's templates, compiled once; ``render`` fills them for one recipient."""

    __slots__ = ("_globals", "_subject", "_html", "_text", "_text_kind", "content", "marketing", "parts")

    def __init__(
        self,
        content: EmailContent,
        marketing: bool,
        subject: Template,
        html: Template | None,
        text: Template | None,
        text_kind: TextSource,
        parts: dict[Part, frozenset[str]],
    ) -> None:
        self.content = content
        self.marketing = marketing
        self._subject = subject
        self._html = html
        self._text = text
        self._text_kind: TextSource = text_kind
        # Jinja's globals (range, dict, ...) as a plain dict: each recipient's context is built once
        # from them and the row, then shared by the templates (new_context copies a ChainMap otherwise)
        self._globals = {**subject.globals, **(text.globals if text is not None else {})}
        # the variables each template uses, by option name
        self.parts = parts

    @property
    def variables(self) -> frozenset[str]:
        """Every variable the templates use (built-ins included)."""
        return frozenset().union(*self.parts.values())

    @property
    def text_source(self) -> TextSource:
        """Where the text part comes from: the ``text`` template, the html template converted once
        (``html-template``), or each rendered html converted (``html-message``)."""
        return self._text_kind

    def check(self, columns: Iterable[str]) -> None:
        """Raise a CampaignError naming every variable the templates use that is neither one of
        ``columns`` nor a built-in."""
        available = list(dict.fromkeys(columns))
        known = set(available) | BUILTINS
        problems = []
        for part, used in self.parts.items():
            for name in sorted(used - known):
                close = difflib.get_close_matches(name, [*available, *sorted(BUILTINS)], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(
                    f"{part} uses {{{{ {name} }}}}, which is not a column of the population{hint}"
                )
        if problems:
            raise CampaignError(
                "; ".join(problems)
                + f". Columns of the population: {', '.join(available) or '(none)'}; built-ins: "
                + ", ".join(sorted(BUILTINS))
                + ". Add the column to the population (the columns of the task that targets it) or change "
                "the template."
            )

    def render(self, row: Mapping[str, Any]) -> tuple[str, str | None, str]:
        """``(subject, html, text)`` for one recipient's ``row`` (columns and built-ins).

        Raises RenderError (a CampaignError) when the row cannot be rendered."""
        context = {**self._globals, **row}
        subject = _run(self._subject, context, "subject")
        html = None if self._html is None else _run(self._html, context, "html")
        if self._text is None:
            text = html_to_text(html or "")
        elif self._text_kind == "text":
            text = _run(self._text, context, "text")
        else:
            text = _finish_rendered(_run(self._text, context, "html"))
        return " ".join(subject.split()), html, text


def _run(template: Template, context: dict[str, Any], part: str) -> str:
    try:
        return "".join(template.root_render_func(template.new_context(context, shared=True)))
    except Exception as exc:
        raise RenderError(f"{part}: {type(exc).__name__}: {exc}") from exc


def compile_email(content: EmailContent, *, marketing: bool = True) -> CompiledEmail:
    """Compile and check ``content``; raise a CampaignError naming the option at fault.

    Checks: every template compiles in the sandbox; the subject is not empty; html or text is
    not empty; the sender and header options are well formed; a ``marketing`` email (the default;
    ``marketing=False`` for transactional mail) uses ``{{ unsubscribe_url }}`` in each body.
    """
    check_address("from_addr", content.from_addr)
    if content.reply_to:
        check_address("reply_to", content.reply_to)
    check_headers(content.headers)
    if content.from_name is not None and ("\r" in content.from_name or "\n" in content.from_name):
        raise CampaignError(
            f"from_name={content.from_name!r}: a display name is one line; remove the line break."
        )
    if not (content.subject or "").strip():
        raise CampaignError(f"subject={content.subject!r}: the subject is empty; give the email a subject.")
    html_source = content.html if content.html and content.html.strip() else None
    text_source = content.text if content.text and content.text.strip() else None
    if html_source is None and text_source is None:
        raise CampaignError(
            f"html={content.html!r}, text={content.text!r}: the body is empty; give the email an html "
            "body, a text body, or both."
        )

    subject, subject_ast = _compile(_TEXT_ENV, content.subject, "subject")
    parts: dict[Part, frozenset[str]] = {"subject": _variables(subject_ast)}
    html = text = None
    text_kind: TextSource = "text"
    if html_source is not None:
        html, html_ast = _compile(_HTML_ENV, html_source, "html")
        parts["html"] = _variables(html_ast)
        if text_source is None:
            text = _text_template(html_source, html_ast)
            text_kind = "html-message" if text is None else "html-template"
    if text_source is not None:
        text, text_ast = _compile(_TEXT_ENV, text_source, "text")
        parts["text"] = _variables(text_ast)

    if marketing:
        examples: dict[Part, str] = {
            "html": '<a href="{{ unsubscribe_url }}">Unsubscribe</a>',
            "text": "Unsubscribe: {{ unsubscribe_url }}",
        }
        for part, example in examples.items():
            if part in parts and "unsubscribe_url" not in parts[part]:
                raise CampaignError(
                    f"{part}: a marketing email must carry an unsubscribe link, and this template does not use "
                    f"{{{{ unsubscribe_url }}}}. Add {example} to it, or pass marketing=False for a "
                    "transactional email."
                )
    return CompiledEmail(content, marketing, subject, html, text, text_kind, parts)


def _compile(env: ImmutableSandboxedEnvironment, source: str, part: Part) -> tuple[Template, nodes.Template]:
    try:
        ast = env.parse(source)
        referenced = [
            repr(name) if name else "a computed name" for name in meta.find_referenced_templates(ast)
        ]
        if referenced:
            raise CampaignError(
                f"{part}: the template refers to another template ({', '.join(referenced)}) with "
                "extends, include or import; templates are self-contained here: put the content in the "
                "template itself (macros can be defined in it)."
            )
        return env.from_string(ast), ast
    except TemplateSyntaxError as exc:
        lines = source.splitlines()
        line = lines[exc.lineno - 1].strip() if exc.lineno and exc.lineno <= len(lines) else ""
        raise CampaignError(
            f"{part}: template syntax error on line {exc.lineno}: {(exc.message or '').rstrip('.')}"
            + (f" (in {line[:80]!r})" if line else "")
            + ". Fix the template: {{ column }} for a value, {% if ... %}...{% endif %} for a condition."
        ) from exc


def _variables(ast: nodes.Template) -> frozenset[str]:
    return frozenset(meta.find_undeclared_variables(ast))


# ---- html to text ---------------------------------------------------------------------------------
#
# The converter writes the words of the html and, between them, markers for what the html asks
# for there: a new line (a <div>), a blank line (a <p>), a space (whitespace in the text), a <br>.
# A run of markers resolves as HTML's whitespace rules do: the strongest break in it, else one
# space; nothing at the start or the end. Because each marker stays where its element is, the
# converter can run once on the html *template*: the markers inside an {% if %} are rendered only
# when it is, and resolving the rendered markers gives the text of the rendered html. Runs between
# two words of the template are resolved once; only the runs next to a template tag (whose output
# decides them) are left for each message, fenced by EDGE so that they are found without a regex.

LINE, PARAGRAPH, SPACE, BR = "\x01", "\x02", "\x03", "\x04"  # a run of these: its strongest break
HARD_SPACE, HARD_NEWLINE, EDGE = "\x05", "\x06", "\x07"  # resolved; the fence of a run left for rendering

_TOKEN = re.compile(
    r"""
      (?P<text>[^<]+)
    | <!--.*?(?:-->|\Z)
    | <(?P<skip>script|style|head|title|template|svg|noscript|xml|object|iframe)\b.*?(?:</(?P=skip)\s*>|\Z)
    | <(?P<close>/?)(?P<name>[a-zA-Z][a-zA-Z0-9:-]*)(?P<attrs>(?:[^<>"']|"[^"]*"|'[^']*')*)>
    | <!\[CDATA\[.*?(?:\]\]>|\Z)
    | <[!?][^>]*>?
    | (?P<lt><)
    """,
    re.S | re.I | re.X,
)
_HREF = re.compile(r"""(?:^|\s)href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.I)
_QUOTED = re.compile(r""""[^"]*"|'[^']*'""")
_WHITESPACE = re.compile(r"\s+")
_PRE_SPACE = re.compile(r"[^\S\n]")  # in preformatted text: each space or tab kept, as a hard space
_RUNS = re.compile(r"([\s\x01-\x04]+)")
_PLACEHOLDER = re.compile("\x00(\\d+)\x00")
# the start of a url that is there and not "#..." nor "javascript:..."
_DECIDED_URL = re.compile(r"(?!javascript:)[a-z][a-z0-9+.-]*:.|/", re.I)
_BLANK_LINES = re.compile(r"\n{3,}")

# markers around a block element
_BREAKS = {
    **dict.fromkeys(("p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "hr", "dl", "figure"), PARAGRAPH),
    **dict.fromkeys(
        (
            "div", "table", "tr", "section", "article", "header", "footer", "nav", "main", "aside",
            "address", "center", "form", "fieldset", "caption", "dt", "dd", "figcaption", "details",
            "summary", "tbody", "thead", "tfoot", "li",
        ),
        LINE,
    ),
}  # fmt: skip
_CELL = frozenset(("td", "th"))
_LISTS = frozenset(("ul", "ol"))

_RESOLVED: dict[str, str] = {}


def _resolve_run(run: str) -> str:
    """What a run of markers and whitespace stands for (as hard characters)."""
    resolved = _RESOLVED.get(run)
    if resolved is None:
        if PARAGRAPH in run or run.count(BR) > 1:
            resolved = HARD_NEWLINE * 2
        elif LINE in run or BR in run:
            resolved = HARD_NEWLINE
        else:
            resolved = HARD_SPACE
        if len(_RESOLVED) < 10_000:
            _RESOLVED[run] = resolved
    return resolved


def _plain(text: str) -> str:
    text = text.replace(HARD_SPACE, " ").replace(HARD_NEWLINE, "\n")
    if "\n\n\n" in text:  # a blank line next to the newlines of preformatted text
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def _finish(marked: str) -> str:
    """The text of converted html: every run of markers resolved, hard characters made plain."""
    parts = _RUNS.split(marked)
    for i in range(1, len(parts), 2):
        parts[i] = _resolve_run(parts[i])
    return _plain("".join(parts))


def _finish_rendered(rendered: str) -> str:
    """The text of a rendered converted template: only the fenced runs are left to resolve, and
    fenced runs with nothing between them are one run."""
    if EDGE in rendered:
        parts = rendered.split(EDGE)
        out = [parts[0]]
        run = ""
        for i in range(1, len(parts)):
            if i % 2:
                run += parts[i]
            elif parts[i]:
                out.append(_resolve_run(run))
                out.append(parts[i])
                run = ""
        if run:
            out.append(_resolve_run(run))
        rendered = "".join(out)
    return _plain(rendered)


def _fenced(value: Any) -> str:
    """A value printed in a converted template: its whitespace as fenced runs, like the
    whitespace of the text around it."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if " " in text or not text.isprintable():
        text = _WHITESPACE.sub(EDGE + SPACE + EDGE, text)
    return text


class _Unsafe(Exception):
    """The html template cannot be converted to a text template; convert each rendered message."""


def html_to_text(html: str) -> str:
    """A readable text version of ``html``: paragraphs and line breaks kept, list items as
    ``* item`` (``1. item`` in ordered lists), links as ``text (url)``; scripts, styles and
    comments dropped; entities decoded; whitespace collapsed as a browser does."""
    return _finish(_convert(html, None))


@dataclass(frozen=True)
class _Marks:
    """Template mode: ``\x00n\x00`` in the source stands for ``tags[n]``; the numbers in
    ``blocks`` are statements (they print nothing), the others expressions."""

    tags: list[str]
    blocks: set[str]

    def resolve(self, text: str) -> str:
        return _PLACEHOLDER.sub(lambda m: self.tags[int(m.group(1))], text) if "\x00" in text else text

    def has_block(self, text: str) -> bool:
        return any(n in self.blocks for n in _PLACEHOLDER.findall(text))

    def add(self, tag: str, block: bool) -> str:
        """A placeholder for a tag the conversion adds."""
        n = str(len(self.tags))
        self.tags.append(tag)
        if block:
            self.blocks.add(n)
        return f"\x00{n}\x00"


def _convert(source: str, marks: _Marks | None) -> str:
    """``source`` as words and markers (with ``marks``: a template whose tags are placeholders;
    raises _Unsafe where converting the template would not give the text of each rendered html)."""
    out: list[str] = []
    links: list[tuple[str, int]] = []
    lists: list[list[int]] = []  # [ordered, counter]
    pre = 0
    sections: list[tuple[int, int]] = []  # (lists, links) where each open {% if %}, {% for %}... began
    for m in _TOKEN.finditer(source):
        text = m.group("text")
        if text is None and m.group("lt"):
            text = "<"
        if text is not None:
            if "&" in text:
                text = unescape(text)
            if marks is not None and "\x00" in text:
                if pre:
                    raise _Unsafe("a template tag in preformatted text")
                if marks.has_block(text):
                    if any(ordered for ordered, _ in lists):
                        raise _Unsafe("a statement inside an ordered list: the numbers depend on the data")
                    _sections(marks, text, sections, (len(lists), len(links)))
            if pre:
                out.append(_PRE_SPACE.sub(HARD_SPACE, text.replace("\r", "")).replace("\n", HARD_NEWLINE))
            else:
                out.append(_WHITESPACE.sub(SPACE, text))
            continue
        name = m.group("name")
        if name is None:
            if marks is not None and "\x00" in m.group(0) and marks.has_block(m.group(0)):
                raise _Unsafe("a template tag inside a comment, script or style")
            continue
        name = name.lower()
        closing = bool(m.group("close"))
        attrs = m.group("attrs")
        if marks is not None and "\x00" in attrs:
            if "\x00" in _QUOTED.sub("", attrs):
                raise _Unsafe("a template tag inside an html tag, outside an attribute value")
            if name != "a" and marks.has_block(attrs):
                raise _Unsafe("a template tag inside an attribute")
        if name in _BREAKS:
            out.append(_BREAKS[name])
            if name == "pre":
                pre = max(0, pre - 1) if closing else pre + 1
            elif name == "li" and not closing:
                if lists and lists[-1][0]:
                    lists[-1][1] += 1
                    marker = f"{lists[-1][1]}."
                else:
                    marker = "*"
                out.append(HARD_SPACE * 2 * (max(len(lists), 1) - 1) + marker + SPACE)
        elif name == "br":
            out.append(BR)
        elif name in _CELL:
            out.append(SPACE)
        elif name in _LISTS:
            out.append(LINE if len(lists) > (1 if closing else 0) else PARAGRAPH)
            if closing:
                if lists:
                    lists.pop()
            else:
                lists.append([name == "ol", 0])
        elif name == "a":
            if closing:
                if links:
                    _end_link(out, *links.pop(), marks)
            elif not attrs.endswith("/"):
                found = _HREF.search(attrs)
                href = next((g for g in found.groups() if g is not None), "") if found else ""
                links.append((unescape(href).strip() if "&" in href else href.strip(), len(out)))
    return "".join(out)


_OPENS = frozenset(("if", "for", "with", "filter", "autoescape", "macro", "call", "block", "set"))


def _sections(marks: _Marks, text: str, sections: list[tuple[int, int]], state: tuple[int, int]) -> None:
    """Follow the statements in ``text``: each {% if %}/{% for %}... section must end (and each
    {% else %} be) where the lists and links open at its start are open, and no others (else
    the list markers and the link urls around it depend on the data)."""
    for n in _PLACEHOLDER.findall(text):
        if n not in marks.blocks:
            continue
        words = marks.tags[int(n)][2:-2].split()
        keyword = words[0] if words else ""
        if keyword in _OPENS and not (keyword == "set" and "=" in marks.tags[int(n)]):
            sections.append(state)
        elif keyword in ("elif", "else") or keyword.startswith("end"):
            if not sections or sections[-1] != state:
                raise _Unsafe(f"{{% {keyword} %}} where other lists or links are open than at its start")
            if keyword.startswith("end"):
                sections.pop()


def _link_suffix(shown: str, href: str, fence: str = SPACE) -> str:
    """What follows a link's (plain) text: `` (url)``; the url alone for a link without text;
    nothing for a link to its own text, to the page itself or to no url."""
    if not href or href.startswith(("#", "javascript:")):
        return ""
    if not shown:
        return fence + href + fence
    if href != shown and href.removeprefix("mailto:") != shown:
        return f"{fence}({href})"
    return ""


def _rendered_link(label: str, href: Any, label_done: bool = False) -> str:
    """_link_suffix in a converted template, for a link whose text or url comes from the data."""
    shown = label if label_done else _finish_rendered(label)
    return _link_suffix(shown, _finish_rendered(_fenced(href)), EDGE + SPACE + EDGE)


def _end_link(out: list[str], href: str, start: int, marks: _Marks | None) -> None:
    static_label = marks is None or not any("\x00" in piece for piece in out[start:])
    if marks is None or (static_label and "\x00" not in href):
        out.append(_link_suffix(_finish("".join(out[start:])), href))
        return
    if static_label:
        shown = _finish("".join(out[start:]))
        prefix = href.split("\x00", 1)[0]
        if shown and _DECIDED_URL.match(prefix) and not shown.startswith(prefix.removeprefix("mailto:")):
            # the url is there and never the link's text: " (url)", the url filled when rendering
            out.append(f"{SPACE}({href})")
            return
        only = _PLACEHOLDER.fullmatch(href)
        if only and only.group(1) not in marks.blocks:
            expression = marks.tags[int(only.group(1))][2:-2].strip()
            out.append(
                marks.add(f"{{{{ _campaign_link({ascii(shown)}, ({expression}), True) }}}}", block=False)
            )
            return
        label = ascii(shown)
    else:
        label = f"_campaign_label_{len(marks.tags)}"
        out.insert(start, marks.add(f"{{% set {label} %}}", block=True))
        out.append(marks.add("{% endset %}", block=True))
        out.append(marks.add(f"{{{{ {label} }}}}", block=False))
    url = f"_campaign_href_{len(marks.tags)}"
    out.append(marks.add(f"{{% set {url} %}}", block=True))
    out.append(href)
    out.append(marks.add("{% endset %}", block=True))
    out.append(marks.add(f"{{{{ _campaign_link({label}, {url}, {static_label}) }}}}", block=False))


# template constructs whose html output is markup or depends on escaping: convert each message instead
_MARKUP_FILTERS = frozenset(("safe", "e", "escape", "forceescape", "urlize", "xmlattr", "tojson"))
_MARKUP_NODES = (
    nodes.Macro,
    nodes.CallBlock,
    nodes.FilterBlock,
    nodes.EvalContextModifier,
    nodes.AssignBlock,
)
# the environment of text templates converted from html templates: values' whitespace fenced
_DERIVED_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, finalize=_fenced)
_DERIVED_ENV.globals["_campaign_link"] = _rendered_link


def _text_template(source: str, ast: nodes.Template) -> Template | None:
    """The text template made by converting the html *template* once, or None when that would
    not give the text of each rendered html (then each rendered html is converted)."""
    if "\x00" in source or EDGE in source:
        return None
    for node in ast.find_all((nodes.Filter, *_MARKUP_NODES)):
        if not isinstance(node, nodes.Filter) or node.name in _MARKUP_FILTERS:
            return None
    try:
        marked, marks = _mark(source)
        converted = _convert(marked, marks)
    except _Unsafe:
        return None
    if not marks.blocks <= set(_PLACEHOLDER.findall(converted)):
        return None  # a statement was dropped (in a comment, a style, an attribute)
    parts = _RUNS.split(converted)
    for i in range(1, len(parts), 2):
        if parts[i - 1].endswith("\x00") or parts[i + 1].startswith("\x00"):
            parts[i] = EDGE + parts[i] + EDGE  # next to a tag: resolved when rendered
        else:
            parts[i] = _resolve_run(parts[i])
    try:
        return _DERIVED_ENV.from_string(marks.resolve("".join(parts)))
    except TemplateSyntaxError:
        return None


def _mark(source: str) -> tuple[str, _Marks]:
    """``source`` with each template tag replaced by ``\x00n\x00``; the tags (whitespace control
    removed: the text keeps its own whitespace); the numbers of the tags that print nothing."""
    out: list[str] = []
    marks = _Marks([], set())
    for kind, inner in _segments(source):
        if kind == "data":
            out.append(inner)
        elif kind == "raw":
            raise _Unsafe("raw block")
        elif kind == "variable":
            out.append(marks.add("{{ " + inner.strip() + " }}", block=False))
        else:
            out.append(marks.add("{% " + inner.strip() + " %}", block=True))
    return "".join(out), marks


def _segments(source: str) -> Iterator[tuple[str, str]]:
    """The template as ("data", text), ("variable", expression), ("block", statement) pieces;
    comments dropped."""
    kind: str | None = None
    inner: list[str] = []
    for _, token, value in _TEXT_ENV.lex(source):
        if token == "data":
            yield "data", value
        elif token in ("variable_begin", "block_begin"):
            kind, inner = token.removesuffix("_begin"), []
        elif token in ("variable_end", "block_end"):
            yield kind or "block", "".join(inner)
            kind = None
        elif token in ("raw_begin", "raw_end"):
            yield "raw", ""
        elif kind is not None:
            inner.append(value)
