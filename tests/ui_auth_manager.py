"""An auth manager for the Campaigns page tests: Airflow's SimpleAuthManager, except that the
user ``outsider`` may read only the DAGs whose id does not end with ``_private``."""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager


class ScopedAuthManager(SimpleAuthManager):
    def is_authorized_dag(
        self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None
    ) -> bool:
        if user.get_name() == "outsider" and (details is None or str(details.id).endswith("_private")):
            return False
        return super().is_authorized_dag(
            method=method, user=user, access_entity=access_entity, details=details
        )
