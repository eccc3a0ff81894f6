"""The Airflow plugin: the campaign pages under ``/campaign`` and their entries in the Airflow UI.

Registered through the ``airflow.plugins`` entry point, so the api-server loads it whenever the
package is installed. ``external_views``: a "Campaigns" entry in the navigation, a "Campaign"
tab on each DAG run and a "Delivery report" tab on each task instance; each renders the page in
the Airflow UI (an iframe of the same origin, so the user's session applies).
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_campaign.ui.links import AudiencesLink, DeliveryReportLink


def _app() -> Any:
    from airflow_campaign.ui.app import create_app

    return create_app()


class CampaignPlugin(AirflowPlugin):
    name = "campaign"
    fastapi_apps = [{"app": _app(), "url_prefix": "/campaign", "name": "Campaigns"}]
    external_views = [
        {
            "name": "Campaigns",
            "href": "/campaign/deliveries",
            "destination": "nav",
            "url_route": "campaigns",
            "category": "browse",
        },
        {
            "name": "Campaign",
            "href": "/campaign/run?dag_id={DAG_ID}&run_id={RUN_ID}",
            "destination": "dag_run",
            "url_route": "campaign-run",
        },
        {
            "name": "Delivery report",
            "href": "/campaign/report?dag_id={DAG_ID}&task_id={TASK_ID}&run_id={RUN_ID}&map_index={MAP_INDEX}",
            "destination": "task_instance",
            "url_route": "delivery-report",
        },
    ]
    operator_extra_links = [DeliveryReportLink(), AudiencesLink()]
