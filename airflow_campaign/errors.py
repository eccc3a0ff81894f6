"""The one exception type for mistakes a DAG author can make, with messages that name the fix."""

from __future__ import annotations


class CampaignError(ValueError):
    """A bad option, input or state: the message names the option, the value and the fix."""
