"""airflow-campaign: marketing campaign workflow activities as an Apache Airflow 3 provider."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


INTEGRATION = "Campaign"


def _option(description: str, example: str, default: str | None, type_: str = "string") -> dict[str, Any]:
    return {
        "description": description,
        "version_added": "0.1.0",
        "type": type_,
        "example": example,
        "default": default,
    }


def get_provider_info() -> dict[str, Any]:
    """Describe this provider to Airflow's providers manager (``airflow providers get airflow-campaign``).

    Checked against Airflow's ``provider_info.schema.json`` by the tests; no deprecated key.
    """
    return {
        "package-name": "airflow-campaign",
        "name": "Campaign",
        "description": "Targeting, data updates, audiences, subscriptions, extracts and deliveries.",
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "tags": ["marketing", "email", "sms", "push", "postgres"],
            }
        ],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_campaign.operators.targeting",
                    "airflow_campaign.operators.housekeeping",
                    "airflow_campaign.operators.update_data",
                    "airflow_campaign.operators.save_audience",
                    "airflow_campaign.operators.subscription_services",
                    "airflow_campaign.operators.extract_file",
                    "airflow_campaign.operators.deliveries",
                    "airflow_campaign.operators.sms",
                    "airflow_campaign.operators.push",
                    "airflow_campaign.operators.feedback",
                ],
            }
        ],
        "hooks": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["airflow_campaign.hooks.campaign"],
            }
        ],
        "extra-links": [
            "airflow_campaign.ui.links.DeliveryReportLink",
            "airflow_campaign.ui.links.AudiencesLink",
        ],
        "asset-uris": [
            {
                "schemes": ["campaign"],
                "handler": "airflow_campaign.assets.sanitize_uri",
                "factory": "airflow_campaign.assets.create_asset",
            }
        ],
        "config": {
            "campaign": {
                "description": "Options of the campaign operators.",
                "options": {
                    "default_channel": _option(
                        "The channel of an EmailDeliveryOperator that does not pass channel= (smtp, "
                        "ses or outbox). Unset (the default), such a delivery fails when its DAG is "
                        "parsed: no delivery falls back to a channel nobody chose. Set it where DAGs "
                        "are parsed and run (environment: AIRFLOW__CAMPAIGN__DEFAULT_CHANNEL).",
                        example="smtp",
                        default=None,
                    ),
                    "ui_conn_id": _option(
                        "The Airflow connection (type postgres) to the campaign database that the "
                        "Campaigns pages of the api-server read (environment: AIRFLOW__CAMPAIGN__UI_CONN_ID).",
                        example="campaign_readonly",
                        default="campaign_default",
                    ),
                    "public_rate_limit": _option(
                        "Requests a minute each client address may make to the public unsubscribe "
                        "endpoint (/campaign/public/unsubscribe) of one api-server process; 429 beyond "
                        "(environment: AIRFLOW__CAMPAIGN__PUBLIC_RATE_LIMIT).",
                        example="30",
                        default="30",
                        type_="integer",
                    ),
                    "outbox_folder": _option(
                        "The folder under which an outbox delivery that passes no folder in its "
                        "channel_options writes its messages, one sub-folder per delivery "
                        "(<outbox_folder>/<delivery>/<log id>.eml). Unset (the default): "
                        "$CAMPAIGN_OUTBOX_DIR, else .campaign/outbox in the worker's working "
                        "directory. A folder in channel_options always wins "
                        "(environment: AIRFLOW__CAMPAIGN__OUTBOX_FOLDER).",
                        example="/data/campaign/outbox",
                        default=None,
                    ),
                    "unsubscribe_key_variable": _option(
                        "The Airflow Variable holding the key that signs unsubscribe and mirror links, "
                        "for a delivery that passes no unsubscribe_key= (which may also name a "
                        "connection: 'connection:<conn_id>'). Set it where DAGs are parsed and run "
                        "(environment: AIRFLOW__CAMPAIGN__UNSUBSCRIBE_KEY_VARIABLE).",
                        example="newsletter_unsubscribe_key",
                        default="campaign_unsubscribe_key",
                    ),
                },
            }
        },
    }
