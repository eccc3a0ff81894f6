"""Housekeeping: drop staging tables older than a retention period."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from airflow_campaign import options
from airflow_campaign.durations import parse_duration
from airflow_campaign.hooks.campaign import CampaignHook


class PruneStagingOperator(BaseOperator):
    """Drop the staging tables (populations) recorded longer ago than ``older_than``.

    :param older_than: retention, e.g. ``"7d"`` (default), ``"12h"`` or a timedelta.
    :param campaign_conn_id: Airflow connection (type postgres) to the campaign database.

    Returns the names of the dropped tables.
    """

    template_fields: Sequence[str] = ("older_than",)

    def __init__(
        self,
        *,
        older_than: str | dt.timedelta = "7d",
        campaign_conn_id: str = "campaign_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not options.templated(older_than):
            options.duration("older_than", older_than)  # fail at parse time, unless it is a template
        self.older_than = older_than
        self.campaign_conn_id = campaign_conn_id

    def execute(self, context: Any) -> list[str]:
        options.duration("older_than", self.older_than)  # a positive duration, once rendered
        seconds = parse_duration(self.older_than, "older_than")
        dropped = CampaignHook(campaign_conn_id=self.campaign_conn_id).prune_staging(seconds)
        self.log.info("dropped %d staging table(s) older than %s", len(dropped), self.older_than)
        return dropped
