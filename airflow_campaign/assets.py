"""The ``campaign://`` Asset URIs: how Airflow normalises and checks them, and how to make one.

A saved audience emits Asset events on ``campaign://audience/<name>``. Airflow calls
:func:`sanitize_uri` (registered under ``asset-uris`` in the provider info) whenever an
``Asset`` with the ``campaign`` scheme is made, in a DAG file or by a task, so a URI that
can never receive an event (an unknown kind, a name no audience can have, a query) fails
where it is written instead of leaving a consumer DAG waiting forever. ``Campaign://Audience/x``
and ``campaign://audience/x/`` are the same Asset as ``campaign://audience/x``; audience
names themselves are case-sensitive.

This module is imported by Airflow's providers manager in every process that resolves an
Asset URI, so it imports nothing heavy.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult

from airflow_campaign.errors import CampaignError, shown

if TYPE_CHECKING:
    from airflow.sdk import Asset

SCHEME = "campaign"
#: What a ``campaign://`` URI can name (its "host" part).
KINDS: tuple[str, ...] = ("audience",)
#: The names an audience can have (they go into Asset URIs and file names).
AUDIENCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
AUDIENCE_NAME_MAX = 100


def audience_uri(name: str) -> str:
    """The Airflow Asset URI of an audience: ``campaign://audience/<name>``."""
    return f"{SCHEME}://audience/{name}"


def sanitize_uri(uri: SplitResult) -> SplitResult:
    """``uri`` normalised (scheme and kind lower case, no trailing slash, no fragment), or a
    CampaignError (a ValueError, as Airflow expects) saying how to write it.

    Airflow has already lower-cased the scheme, dropped a password and the fragment and
    stripped trailing slashes when it calls this for a new ``Asset``; this does the same for
    a URI given as it was written (``Asset.normalized_uri``).
    """
    text = shown(SplitResult(uri.scheme, uri.netloc, uri.path, uri.query, "").geturl())
    if uri.scheme.lower() != SCHEME:
        raise CampaignError(f"Asset URI {text}: not a {SCHEME}:// URI.")
    example = f"write {audience_uri('<name>')}, e.g. {audience_uri('loyal_customers')}"
    if "@" in uri.netloc or ":" in uri.netloc:
        raise CampaignError(f"Asset URI {text}: a {SCHEME}:// URI has no user, password or port; {example}.")
    kind = uri.netloc.lower()
    if kind not in KINDS:
        raise CampaignError(
            f"Asset URI {text}: {shown(kind or '')} is not a kind of {SCHEME}:// URI (one of "
            f"{list(KINDS)}); {example}."
        )
    if uri.query:
        raise CampaignError(
            f"Asset URI {text}: a {SCHEME}:// URI has no query; no audience is saved under "
            f"{text}, so nothing would ever trigger on it. Remove ?{shown(uri.query, quote=False)}."
        )
    name = uri.path.rstrip("/").removeprefix("/")
    if not AUDIENCE_NAME.fullmatch(name) or len(name) > AUDIENCE_NAME_MAX:
        raise CampaignError(
            f"Asset URI {text}: {shown(name)} is not an audience name: use 1 to {AUDIENCE_NAME_MAX} "
            "letters, digits, '_', '-' or '.', starting with a letter or digit (no '/'); "
            f"{example}."
        )
    return SplitResult(SCHEME, kind, f"/{name}", "", "")


def create_asset(*, audience: str, extra: dict[str, Any] | None = None) -> Asset:
    """The Asset of an audience, for Airflow's hook lineage (``create_asset(scheme="campaign",
    asset_kwargs={"audience": "loyal_customers"})``)."""
    from airflow.sdk import Asset

    return Asset(uri=audience_uri(audience), extra=extra)
