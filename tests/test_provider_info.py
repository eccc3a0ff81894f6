"""The provider as Airflow sees it: provider info, the ``campaign://`` Asset URIs, the ``[campaign]`` options.

- ``get_provider_info()`` matches Airflow's own schema (no deprecated or unknown key), lists
  every operator and hook module, and ``airflow providers get`` shows it;
- Airflow's Asset machinery calls the ``campaign://`` handler: URIs are normalised, and a URI
  no audience can have fails where it is written (in a DAG file: an import error);
- ``[campaign] outbox_folder`` and ``[campaign] unsubscribe_key_variable`` take effect in a
  real delivery, below what the DAG passes explicitly.
"""

from __future__ import annotations

import email
import email.policy
import importlib
import inspect
import json
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import airflow_campaign
from airflow_campaign import assets, get_provider_info
from airflow_campaign.errors import CampaignError

INFO = get_provider_info()
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
NL_KEY = "a-newsletter-key-of-thirty-two-bytes!"


def airflow_schema() -> dict[str, Any]:
    from airflow import providers_manager

    path = Path(providers_manager.__file__).with_name("provider_info.schema.json")
    return json.loads(path.read_text(encoding="utf-8"))


def modules(info: dict[str, Any], key: str) -> list[str]:
    return [m for entry in info.get(key, []) for m in entry["python-modules"]]


def run_airflow(tmp_path: Path, *args: str) -> str:
    """Run the real ``airflow`` command in a fresh AIRFLOW_HOME; its stdout."""
    home = tmp_path / "airflow-home"
    home.mkdir(exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__CAMPAIGN__")}
    environ.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS="True")
    done = subprocess.run(
        [AIRFLOW, *args], env=environ, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# ---- provider info ------------------------------------------------------------------------------


def test_the_provider_info_matches_airflows_schema_with_no_deprecated_or_unknown_key() -> None:
    import jsonschema

    schema = airflow_schema()
    jsonschema.validate(INFO, schema)
    known = schema["properties"]
    assert set(INFO) <= set(known), f"not in Airflow's schema: {sorted(set(INFO) - set(known))}"
    assert [k for k in INFO if "deprecated" in known[k]] == []
    assert "dataset-uris" not in INFO and "hook-class-names" not in INFO
    for option in INFO["config"]["campaign"]["options"].values():
        assert set(option) >= set(schema["definitions"]["option"]["required"])
        assert set(option) <= set(schema["definitions"]["option"]["properties"])
    integrations = {i["integration-name"] for i in INFO["integrations"]}
    for key in ("operators", "hooks"):
        assert {entry["integration-name"] for entry in INFO[key]} <= integrations


def test_every_operator_module_and_the_hook_are_listed() -> None:
    from airflow.sdk import BaseHook, BaseOperator

    package = importlib.import_module("airflow_campaign.operators")
    found = {
        f"airflow_campaign.operators.{m.name}"
        for m in pkgutil.iter_modules(package.__path__)
        if m.name != "base"
    }
    listed = modules(INFO, "operators")
    assert sorted(listed) == sorted(found) and len(listed) == len(set(listed))
    assert "airflow_campaign.operators.deliveries" in listed
    for name in listed:  # each defines an operator of its own
        module = importlib.import_module(name)
        assert any(
            issubclass(c, BaseOperator) and c.__module__ == name
            for _, c in inspect.getmembers(module, inspect.isclass)
        ), name
    (hook_module,) = modules(INFO, "hooks")
    from airflow_campaign.hooks.campaign import CampaignHook

    assert hook_module == CampaignHook.__module__ and issubclass(CampaignHook, BaseHook)


def test_extra_links_are_declared_exactly_when_operator_link_classes_exist() -> None:
    """No operator defines a link yet, so there is no "extra-links" key; a link class added
    later must be declared, or Airflow's UI never shows it."""
    from airflow.sdk import BaseOperatorLink

    links = set()
    for found in pkgutil.walk_packages(airflow_campaign.__path__, "airflow_campaign."):
        if found.name in ("airflow_campaign.demo", "airflow_campaign.seed"):
            continue
        module = importlib.import_module(found.name)
        links |= {
            f"{c.__module__}.{c.__qualname__}"
            for _, c in inspect.getmembers(module, inspect.isclass)
            if issubclass(c, BaseOperatorLink) and c is not BaseOperatorLink and c.__module__ == found.name
        }
    assert sorted(INFO.get("extra-links", [])) == sorted(links)


def test_the_options_are_read_with_the_declared_defaults() -> None:
    from airflow_campaign.delivery.unsubscribe import DEFAULT_KEY_VARIABLE

    options = INFO["config"]["campaign"]["options"]
    assert options["default_channel"]["default"] is None and options["default_channel"]["example"] == "smtp"
    assert options["outbox_folder"]["default"] is None  # unset: $CAMPAIGN_OUTBOX_DIR, then .campaign/outbox
    assert options["unsubscribe_key_variable"]["default"] == DEFAULT_KEY_VARIABLE


def test_the_airflow_cli_shows_the_provider_and_its_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (shown,) = json.loads(
        run_airflow(tmp_path, "providers", "get", "airflow-campaign", "--full", "-o", "json")
    )
    assert shown["package-name"] == "airflow-campaign"
    assert modules(shown, "operators") == modules(INFO, "operators")
    assert modules(shown, "hooks") == ["airflow_campaign.hooks.campaign"]
    assert shown["asset-uris"] == [
        {
            "schemes": ["campaign"],
            "handler": "airflow_campaign.assets.sanitize_uri",
            "factory": "airflow_campaign.assets.create_asset",
        }
    ]
    assert set(shown["config"]["campaign"]["options"]) == {
        "default_channel",
        "outbox_folder",
        "unsubscribe_key_variable",
        "ui_conn_id",
        "public_rate_limit",
    }
    assert shown["extra-links"] == [
        "airflow_campaign.ui.links.DeliveryReportLink",
        "airflow_campaign.ui.links.AudiencesLink",
    ]
    # Airflow's configuration knows the section: the declared default, and the environment above it
    value = run_airflow(
        tmp_path,
        "config",
        "get-value",
        "campaign",
        "unsubscribe_key_variable",
    )
    assert value.strip() == "campaign_unsubscribe_key"
    # and the environment wins over it (in-process: another `airflow` start costs 8 s)
    from airflow.configuration import conf

    monkeypatch.setenv("AIRFLOW__CAMPAIGN__OUTBOX_FOLDER", "/srv/outbox")
    assert conf.get("campaign", "outbox_folder") == "/srv/outbox"


# ---- campaign:// Asset URIs ----------------------------------------------------------------------


def test_airflow_registers_the_handler_for_the_campaign_scheme() -> None:
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    assert ProvidersManagerTaskRuntime().asset_uri_handlers["campaign"] is assets.sanitize_uri
    assert ProvidersManagerTaskRuntime().asset_factories["campaign"] is assets.create_asset


@pytest.mark.parametrize(
    "written",
    [
        "campaign://audience/loyal_Customers",
        "Campaign://AUDIENCE/loyal_Customers",
        "campaign://audience/loyal_Customers/",
        "campaign://audience/loyal_Customers#members",
    ],
)
def test_an_asset_uri_is_normalised_by_the_handler(written: str) -> None:
    from airflow.sdk import Asset

    asset = Asset(written)
    assert asset.uri == "campaign://audience/loyal_Customers"  # names keep their case
    assert Asset(written).normalized_uri == "campaign://audience/loyal_Customers"


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("campaign://segment/loyal", "'segment' is not a kind of campaign:// URI (one of ['audience'])"),
        ("campaign://audience/", "'' is not an audience name"),
        ("campaign://audience/eu/loyal", "'eu/loyal' is not an audience name"),
        ("campaign://audience/_loyal", "'_loyal' is not an audience name"),
        ("campaign://audience/" + "x" * 101, "use 1 to 100 letters"),
        ("campaign://audience/loyal?v=2", "a campaign:// URI has no query"),
        ("campaign://ops@audience/loyal", "has no user, password or port"),
        ("campaign://audience:5432/loyal", "has no user, password or port"),
    ],
)
def test_an_asset_uri_no_audience_can_have_is_refused_where_it_is_written(written: str, message: str) -> None:
    from airflow.sdk import Asset

    with pytest.raises(CampaignError, match=re.escape(message)) as caught:
        Asset(written)
    assert str(caught.value).startswith(f"Asset URI {written!r}: ")


def test_the_handler_accepts_exactly_the_names_an_audience_can_have() -> None:
    from airflow.sdk import Asset

    from airflow_campaign.operators.save_audience import check_audience_name

    for name in [
        "a",
        "Loyal",
        "loyal.customers-2026_05",
        "9lives",
        "x" * 100,
        "-a",
        ".a",
        "a b",
        "é",
        "a/b",
        "",
    ]:
        try:
            check_audience_name("audience", name)
            valid = True
        except CampaignError:
            valid = False
        if valid:
            assert Asset(assets.audience_uri(name)).uri == f"campaign://audience/{name}"
        else:
            with pytest.raises(CampaignError):
                Asset(assets.audience_uri(name))


def test_a_dag_file_with_a_bad_campaign_uri_gets_an_import_error_naming_the_fix(tmp_path: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    (tmp_path / "consumer.py").write_text(
        "from airflow.sdk import DAG, Asset\n"
        "with DAG('consumer', schedule=[Asset('campaign://audiences/loyal')]):\n"
        "    pass\n",
        encoding="utf-8",
    )
    (tmp_path / "good.py").write_text(
        "from airflow.sdk import DAG, Asset\n"
        "with DAG('good', schedule=[Asset('Campaign://Audience/loyal/')]) as dag:\n"
        "    pass\n",
        encoding="utf-8",
    )
    bag = DagBag(dag_folder=str(tmp_path))
    (error,) = bag.import_errors.values()
    assert "'audiences' is not a kind of campaign:// URI" in error
    assert "write campaign://audience/<name>" in error
    (asset,) = bag.dags["good"].timetable.asset_condition.objects
    assert asset.uri == "campaign://audience/loyal"


def test_hook_lineage_makes_an_audience_asset_with_the_factory() -> None:
    from airflow.sdk.lineage import get_hook_lineage_collector

    asset = get_hook_lineage_collector().create_asset(
        scheme="campaign", asset_kwargs={"audience": "loyal_customers"}, asset_extra={"size": 3}
    )
    assert asset.uri == "campaign://audience/loyal_customers" and asset.extra == {"size": 3}


# ---- the [campaign] options in a real delivery ---------------------------------------------------


@pytest.fixture
def unset_options(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "AIRFLOW__CAMPAIGN__OUTBOX_FOLDER",
        "AIRFLOW__CAMPAIGN__UNSUBSCRIBE_KEY_VARIABLE",
        "CAMPAIGN_OUTBOX_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_outbox_folder_comes_from_the_option_then_the_environment_then_the_built_in(
    unset_options: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airflow_campaign.channels.outbox import default_folder

    assert default_folder("spring") == os.path.join(".campaign/outbox", "spring")
    unset_options.setenv("CAMPAIGN_OUTBOX_DIR", str(tmp_path / "env"))
    assert default_folder("spring") == str(tmp_path / "env" / "spring")
    unset_options.setenv("AIRFLOW__CAMPAIGN__OUTBOX_FOLDER", str(tmp_path / "conf"))
    assert default_folder("spring") == str(tmp_path / "conf" / "spring")


def test_a_delivery_uses_the_configured_outbox_folder_and_key_variable(
    scratch, context, unset_options: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airflow_campaign.delivery.unsubscribe import KeyRing, verify_link
    from airflow_campaign.operators.deliveries import EmailDeliveryOperator
    from airflow_campaign.operators.targeting import QueryOperator

    unset_options.setenv("AIRFLOW__CAMPAIGN__OUTBOX_FOLDER", str(tmp_path / "outbox"))
    unset_options.setenv("CAMPAIGN_OUTBOX_DIR", str(tmp_path / "not-this-one"))
    unset_options.setenv("AIRFLOW__CAMPAIGN__UNSUBSCRIBE_KEY_VARIABLE", "campaign_newsletter_key")
    unset_options.setenv("AIRFLOW_VAR_CAMPAIGN_NEWSLETTER_KEY", NL_KEY)
    pop = QueryOperator(task_id="targets", campaign_conn_id=scratch.conn_id, where="id <= 5").execute(
        context("targets")
    )
    newsletter: dict[str, Any] = {
        "population": pop,
        "subject": "Hello",
        "html": '<p>Hi</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>',
        "from_addr": "news@example.com",
        "unsubscribe_url": "https://example.com/unsubscribe",
        "channel": "outbox",
        "campaign_conn_id": scratch.conn_id,
    }
    operator = EmailDeliveryOperator(task_id="newsletter", delivery="spring", **newsletter)
    assert operator.unsubscribe_key == "variable:campaign_newsletter_key"
    operator.execute(context("newsletter"))

    files = sorted((tmp_path / "outbox" / "spring").glob("*.eml"))
    assert len(files) == 5 and not (tmp_path / "not-this-one").exists()
    for path in files:
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        link = re.search(r"<(https://[^>]+)>", msg["List-Unsubscribe"]).group(1)  # type: ignore[union-attr]
        assert verify_link(link, KeyRing.parse(NL_KEY)).valid

    # what the DAG passes wins over the options
    explicit = tmp_path / "explicit"
    unset_options.setenv("AIRFLOW_VAR_CAMPAIGN_OTHER_KEY", "another-key-of-thirty-two-bytes!!!")
    EmailDeliveryOperator(
        task_id="autumn",
        delivery="autumn",
        channel_options={"folder": str(explicit)},
        unsubscribe_key="variable:campaign_other_key",
        **newsletter,
    ).execute(context("autumn"))
    (first, *_) = sorted(explicit.glob("*.eml"))
    msg = email.message_from_bytes(first.read_bytes(), policy=email.policy.default)
    link = re.search(r"<(https://[^>]+)>", msg["List-Unsubscribe"]).group(1)  # type: ignore[union-attr]
    assert verify_link(link, KeyRing.parse("another-key-of-thirty-two-bytes!!!")).valid
    assert not (tmp_path / "outbox" / "autumn").exists()


def test_without_the_option_the_key_variable_is_campaign_unsubscribe_key(
    unset_options: pytest.MonkeyPatch,
) -> None:
    from airflow_campaign.delivery.unsubscribe import load_keys
    from airflow_campaign.operators.deliveries import EmailDeliveryOperator

    operator = EmailDeliveryOperator(
        task_id="newsletter",
        population=[{"id": 1}],
        subject="Hi",
        from_addr="news@example.com",
        text="Hello",
        marketing=False,
        channel="outbox",
    )
    assert operator.unsubscribe_key == "variable:campaign_unsubscribe_key"
    unset_options.delenv("AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY", raising=False)
    with pytest.raises(
        CampaignError, match=r"^unsubscribe_key='variable:campaign_unsubscribe_key': no Airflow"
    ):
        load_keys()
