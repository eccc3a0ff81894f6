"""airflow-campaign: marketing campaign workflow activities as an Apache Airflow 3 provider."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """Describe this provider to Airflow's providers manager."""
    return {
        "package-name": "airflow-campaign",
        "name": "Campaign",
        "description": "Targeting, data updates, audiences, subscriptions, extracts and deliveries.",
        "versions": [__version__],
        "hook-class-names": [],
        "operators": [
            {
                "integration-name": "Campaign",
                "python-modules": [
                    "airflow_campaign.operators.targeting",
                    "airflow_campaign.operators.housekeeping",
                    "airflow_campaign.operators.update_data",
                    "airflow_campaign.operators.save_audience",
                    "airflow_campaign.operators.subscription_services",
                    "airflow_campaign.operators.extract_file",
                ],
            }
        ],
        "hooks": [
            {
                "integration-name": "Campaign",
                "python-modules": ["airflow_campaign.hooks.campaign"],
            }
        ],
        "config": {
            "campaign": {
                "description": "Options of the campaign operators.",
                "options": {
                    "default_channel": {
                        "description": (
                            "The channel of an EmailDeliveryOperator that does not pass channel= (smtp, "
                            "ses or outbox). Unset (the default), such a delivery fails when its DAG is "
                            "parsed: no delivery falls back to a channel nobody chose. Set it where DAGs "
                            "are parsed and run (environment: AIRFLOW__CAMPAIGN__DEFAULT_CHANNEL)."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "smtp",
                        "default": None,
                    }
                },
            }
        },
    }
