"""The campaign pages in the Airflow UI (an Airflow plugin) and the public unsubscribe endpoint."""
