"""The one exception type for mistakes a DAG author can make, with messages that name the fix."""

from __future__ import annotations

from typing import Any

SHOWN = 200  # characters of a value an error message shows


MESSAGE_LIMIT = 4000  # characters of a whole message; values in it are cut to SHOWN already


class CampaignError(ValueError):
    """A bad option, input or state: the message names the option, the value and the fix.

    A message longer than ``MESSAGE_LIMIT`` (a value someone forgot to cut) keeps its start and
    its end, where the fix is, around a note of how much was left out.
    """

    def __init__(self, message: str = "", *args: Any) -> None:
        if isinstance(message, str) and len(message) > MESSAGE_LIMIT:
            head, tail = message[: MESSAGE_LIMIT - 700], message[-500:]
            message = f"{head} … ({len(message) - len(head) - len(tail):,} characters left out) … {tail}"
        super().__init__(message, *args)


def shown(value: Any, limit: int = SHOWN, *, quote: bool = True) -> str:
    """``repr(value)`` (or ``str`` with ``quote=False``) cut to about ``limit`` characters.

    Error messages show a value so the author recognises it; a 1 MB value is shown by its
    start and its length, never whole.
    """
    try:
        text = repr(value) if quote else str(value)
    except Exception:  # a value whose repr fails still gets an error message
        text = f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"
