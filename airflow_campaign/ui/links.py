"""Operator extra links: every delivery task links to its report, SaveAudienceOperator to the audiences."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from airflow.sdk import BaseOperatorLink


def _prefix() -> str:
    """The api-server's path prefix (``[api] base_url``'s path), so links work behind a proxy."""
    from urllib.parse import urlsplit

    from airflow.sdk import conf

    base = conf.get("api", "base_url", fallback="") or ""
    return urlsplit(base).path.rstrip("/")


class DeliveryReportLink(BaseOperatorLink):
    """The task instance's delivery report on the Campaigns pages."""

    name = "Delivery report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        query = {"dag_id": ti_key.dag_id, "task_id": ti_key.task_id, "run_id": ti_key.run_id}
        if getattr(ti_key, "map_index", -1) is not None and ti_key.map_index >= 0:
            query["map_index"] = ti_key.map_index
        return f"{_prefix()}/campaign/report?{urlencode(query)}"


class AudiencesLink(BaseOperatorLink):
    """The audiences page, where a saved audience's size history is."""

    name = "Audiences"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return f"{_prefix()}/campaign/audiences"
