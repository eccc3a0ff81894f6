"""The optional parts of the package (pip extras), and the error a feature raises without its part.

The core (targeting, CSV/TSV/JSON Lines files on local disk, data updates, audiences,
subscriptions, extracts to local files, deliveries over SMTP or the outbox) needs none of
them. A feature that does imports its libraries inside :func:`needs`, so a missing library
is a CampaignError naming the extra to install, not a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow_campaign.errors import CampaignError

#: Each extra and what it brings: ``pip install 'airflow-campaign[<extra>]'``.
EXTRAS: dict[str, str] = {
    "amazon": "s3:// paths and the ses channel",
    "parquet": "Parquet files",
    "pgp": "OpenPGP encryption of extracts",
    "pandas": "DataFrames as populations",
    "sms": "SMS deliveries: phone numbers and GSM-7",
}


def install_command(extra: str) -> str:
    """The pip command that installs ``extra``."""
    return f"pip install 'airflow-campaign[{extra}]'"


@contextmanager
def needs(extra: str, feature: str) -> Iterator[None]:
    """Import the libraries of ``extra`` inside this block; a missing one is a CampaignError.

    ``feature`` names what the user asked for (the option and its value, e.g.
    ``"format='parquet'"``), so the message says which setting needs which extra::

        with needs("parquet", f"path={path!r}"):
            import pyarrow.parquet as pq
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; one of {sorted(EXTRAS)}")
    try:
        yield
    except ImportError as exc:
        missing = exc.name or str(exc)
        raise CampaignError(
            f"{feature} needs the optional {extra!r} part of airflow-campaign ({EXTRAS[extra]}): "
            f"{missing!r} cannot be imported here. Install it wherever DAGs are parsed and tasks run: "
            f"{install_command(extra)}."
        ) from exc
