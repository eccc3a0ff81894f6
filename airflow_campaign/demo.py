"""`airflow-campaign demo`: the demo campaign on embedded defaults, with a report checked against the inputs.

Before the DAG runs, the demo records what the DAG reads (profiles, subscriptions, audiences,
quarantine, and the sign-up file parsed in Python) in schema ``campaign_demo``. Every line of
the report then compares what a task produced (its population table, the audience, the file,
the profiles, the subscription events, the .eml files) with the same selection recomputed
here in SQL from those recorded inputs, never with a table the operator wrote itself.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.parser import HeaderParser
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from psycopg import sql

DAG_ID = "campaign_targeting"

# The rules the DAG states (tests/test_demo_checks.py checks the DAG still states them).
FRENCH = "country = 'FR' AND email IS NOT NULL AND NOT email_denylisted"
GOLD = "loyalty_points >= 8000"
TEST_CELL_PERCENT = 10
GOLD_FILE_COLUMNS = ["id", "email", "locale", "loyalty_points"]
# an address the delivery may send to: one @, no spaces, a dotted domain (written independently
# of the delivery engine's own grammar)
VALID_EMAIL = r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$"

# What the DAG must produce, written over the inputs recorded before the run (schema campaign_demo).
_FRENCH = f"SELECT id FROM campaign_demo.profiles WHERE {FRENCH}"
_NEWS = "SELECT profile_id FROM campaign_demo.subscriptions WHERE service = 'newsletter'"
_PROMOTED = "SELECT profile_id FROM campaign_demo.subscriptions WHERE service = 'promotions'"
_DNC = "SELECT member_key::bigint FROM campaign_demo.audience_members WHERE audience = 'do_not_contact'"
_FRENCH_READERS = f"({_FRENCH}) INTERSECT ({_NEWS})"
_CONTACTABLE = f"({_FRENCH_READERS}) EXCEPT ({_DNC})"
# one profile per address: the most points, then the smallest id
_BEST = (
    "SELECT DISTINCT ON (email) id, loyalty_points FROM campaign_demo.profiles"
    f" WHERE id IN ({_CONTACTABLE}) ORDER BY email, loyalty_points DESC, id"
)
_BEST_IDS = f"SELECT id FROM ({_BEST}) b"
_GOLD = f"SELECT id FROM ({_BEST}) b WHERE {GOLD}"
_NOT_GOLD = f"SELECT id FROM ({_BEST}) b WHERE NOT ({GOLD})"
# sign-up lines with valid points whose email is exactly one profile's, and that profile
_ACCEPTED = (
    "SELECT s.line, min(p.id) AS id FROM campaign_demo.signups s"
    " JOIN campaign_demo.profiles p ON p.email = s.email WHERE s.points IS NOT NULL"
    " GROUP BY s.line HAVING count(*) = 1"
)
_SIGNUP_IDS = f"SELECT id FROM ({_ACCEPTED}) a"
_REJECTED_LINES = f"SELECT line FROM campaign_demo.signups EXCEPT SELECT line FROM ({_ACCEPTED}) a"
_NEW_READERS = f"({_SIGNUP_IDS}) EXCEPT ({_NEWS})"
_TO_SUBSCRIBE = f"({_SIGNUP_IDS}) EXCEPT ({_PROMOTED})"
_RAISES = (
    f"SELECT a.id, max(s.points) AS points FROM ({_ACCEPTED}) a"
    " JOIN campaign_demo.signups s ON s.line = a.line GROUP BY a.id"
)
# each gold profile with the first reason the email must skip it (NULL: it gets the message)
_SCREENED = (
    "SELECT p.id, lower(p.email) AS address, CASE"
    " WHEN p.email IS NULL OR btrim(p.email) = '' THEN 'missing address'"
    f" WHEN p.email !~ '{VALID_EMAIL}' THEN 'invalid address'"
    " WHEN p.email_denylisted THEN 'denylisted'"
    " WHEN lower(p.email) IN (SELECT address FROM campaign_demo.quarantine WHERE channel = 'email')"
    " THEN 'quarantined'"
    f" WHEN p.id NOT IN ({_NEWS}) THEN 'not subscribed' END AS reason"
    f" FROM campaign_demo.profiles p WHERE p.id IN ({_GOLD})"
)
_DELIVERY = (
    "SELECT id, address, coalesce(reason, CASE WHEN row_number() OVER"
    " (PARTITION BY reason IS NULL, address ORDER BY id) > 1 THEN 'duplicate address' END) AS reason"
    f" FROM ({_SCREENED}) s"
)
_RECIPIENTS = f"SELECT id FROM ({_DELIVERY}) d WHERE reason IS NULL"
# the gold SMS: one per valid number (campaign_demo.gold_phones, read at input time), the smallest id
_SMS_SENT = (
    "SELECT DISTINCT ON (g.e164) g.id, g.e164 FROM campaign_demo.gold_phones g JOIN campaign_demo.profiles p"
    " ON p.id = g.id WHERE NOT p.sms_denylisted AND g.e164 NOT IN"
    " (SELECT address FROM campaign_demo.quarantine WHERE channel = 'sms') ORDER BY g.e164, g.id"
)
# the gold push: the gold profiles with an enabled install of the shop app
_PUSH_SENT = (
    "SELECT DISTINCT a.profile_id FROM campaign_demo.app_subscriptions a JOIN campaign_demo.profiles p"
    f" ON p.id = a.profile_id WHERE p.id IN ({_GOLD}) AND a.app = 'shop' AND a.enabled AND NOT p.push_denylisted"
    " AND lower(a.platform || ':' || a.device_token) NOT IN"
    " (SELECT address FROM campaign_demo.quarantine WHERE channel = 'push')"
)


@dataclass(frozen=True)
class Expect:
    """The keys a population must hold: ``keys`` is SQL over the recorded inputs.

    ``percent``: a random draw of that percent of ``keys`` (rounded up): its size is checked,
    and that it draws only from ``keys``. ``minus``: the keys of that other output of the run
    are taken out of ``keys`` first (the complement of a random draw).
    """

    keys: str
    key: str = "id"
    percent: float | None = None
    minus: str | None = None


EXPECT: dict[str, Expect] = {
    "do_not_contact": Expect(_DNC),
    "french_profiles": Expect(_FRENCH),
    "newsletter_readers": Expect(_NEWS),
    "french_readers": Expect(_FRENCH_READERS),
    "contactable": Expect(_CONTACTABLE),
    "one_per_address": Expect(_BEST_IDS),
    "enriched": Expect(_BEST_IDS),
    "segments: gold": Expect(_GOLD),
    "segments: test_cell": Expect(_NOT_GOLD, percent=TEST_CELL_PERCENT),
    "segments: regular": Expect(_NOT_GOLD, minus="segments: test_cell"),
    "store_signups": Expect(_SIGNUP_IDS),
    "store_signups: rejects": Expect(_REJECTED_LINES, key="_line"),
    "new_readers": Expect(_NEW_READERS),
    "promotions": Expect(_TO_SUBSCRIBE),
    "gold_email: targets": Expect(_GOLD),
    "gold_email: sent": Expect(_RECIPIENTS),
    "gold_sms: targets": Expect(_GOLD),
    "gold_sms: sent": Expect(f"SELECT id FROM ({_SMS_SENT}) s"),
    "gold_push: targets": Expect(_GOLD),
    "gold_push: sent": Expect(_PUSH_SENT),
}


def write_signups(conn: Any, path: Path) -> dict[str, int]:
    """A store's sign-up file: known customers' emails, unknown ones and a few bad point values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    emails = [
        r[0]
        for r in conn.execute(
            "SELECT email FROM campaign.profiles WHERE email LIKE '%@%' AND id % 487 = 0 ORDER BY id"
        )
    ]
    lines = ["email,points"]
    lines += [f"{email},{i * 10}" for i, email in enumerate(emails)]
    lines += [f"walk-in-{i}@store.example.com,5" for i in range(20)]
    lines += [f"{email},lots" for email in emails[:5]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"known": len(emails), "unknown": 20, "bad_points": 5}


_INTEGER = re.compile(r"\s*[+-]?\d+\s*")


def parse_signups(path: Path) -> Iterator[tuple[int, str | None, int | None]]:
    """(data line number from 1, email, points or None when not a valid integer) per row of the file."""
    with path.open(newline="", encoding="utf-8") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=1):
            text = row.get("points") or ""
            points = int(text) if _INTEGER.fullmatch(text) else None
            if points is not None and not -(2**31) <= points < 2**31:
                points = None
            yield line, row.get("email") or None, points


def record_inputs(conn: Any, signups: Path) -> None:
    """Copy what the DAG reads into schema ``campaign_demo``, before the run: the checks' inputs."""
    with conn.transaction():
        conn.execute("DROP SCHEMA IF EXISTS campaign_demo CASCADE")
        conn.execute("CREATE SCHEMA campaign_demo")
        conn.execute(
            "CREATE TABLE campaign_demo.profiles AS SELECT id, email, phone, country, locale, loyalty_points,"
            " email_denylisted, sms_denylisted, push_denylisted FROM campaign.profiles"
        )
        conn.execute(
            "CREATE TABLE campaign_demo.subscriptions AS SELECT v.name AS service, s.profile_id"
            " FROM campaign.subscriptions s JOIN campaign.services v ON v.id = s.service_id"
        )
        conn.execute(
            "CREATE TABLE campaign_demo.audience_members AS SELECT a.name AS audience, m.member_key"
            " FROM campaign.audience_members m JOIN campaign.audiences a ON a.id = m.audience_id"
        )
        conn.execute(
            "CREATE TABLE campaign_demo.quarantine AS SELECT channel, address FROM campaign.quarantine"
        )
        conn.execute(
            "CREATE TABLE campaign_demo.app_subscriptions AS SELECT profile_id, app, platform, device_token,"
            " enabled FROM campaign.app_subscriptions"
        )
        conn.execute(
            "CREATE TABLE campaign_demo.signups (line integer PRIMARY KEY, email text, points integer)"
        )
        with conn.cursor().copy("COPY campaign_demo.signups (line, email, points) FROM STDIN") as copy:
            for row in parse_signups(signups):
                copy.write_row(row)
        conn.execute("ALTER TABLE campaign_demo.profiles ADD PRIMARY KEY (id)")
        # the gold profiles' numbers, read here with phonenumbers (not by the delivery's cache)
        conn.execute("CREATE TABLE campaign_demo.gold_phones (id bigint PRIMARY KEY, e164 text NOT NULL)")
        with conn.cursor(name="demo_gold_phones") as cur:  # a page at a time: fetch, then COPY
            cur.execute(
                f"SELECT id, phone, country FROM campaign_demo.profiles WHERE id IN ({_GOLD}) AND phone IS NOT NULL"
            )
            while page := cur.fetchmany(5000):
                with conn.cursor().copy("COPY campaign_demo.gold_phones (id, e164) FROM STDIN") as copy:
                    for number in _valid_numbers(page):
                        copy.write_row(number)
        for table in (
            "profiles",
            "subscriptions",
            "audience_members",
            "quarantine",
            "signups",
            "app_subscriptions",
        ):
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier("campaign_demo", table)))


# where the demo email's links point: the public pages of `make ui` (one-click unsubscribe and
# "View in your browser"); `make ui` sets it to its own port, `make demo` leaves the default
PUBLIC_URL_ENV = "CAMPAIGN_DEMO_PUBLIC_URL"
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8080/campaign/public"


def airflow_env(workdir: Path, url: str, public_url: str | None = None) -> dict[str, str]:
    """Environment for an Airflow on SQLite in ``workdir/airflow`` using the embedded server.

    ``public_url`` is the base of the demo email's links (``<it>/unsubscribe``, ``<it>/mirror``):
    default ``$CAMPAIGN_DEMO_PUBLIC_URL``, else ``make ui``'s on its default port.
    """
    import json

    from airflow_campaign.embedded import connection_fields

    home = workdir / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path("dags_examples").resolve()),
        "AIRFLOW_CONN_CAMPAIGN_DEFAULT": json.dumps(connection_fields(url)),
        "CAMPAIGN_DEMO_DIR": str(workdir),
        PUBLIC_URL_ENV: (public_url or os.environ.get(PUBLIC_URL_ENV) or DEFAULT_PUBLIC_URL).rstrip("/"),
        # deliveries that name no channel use the outbox here; a production deployment names its own
        "AIRFLOW__CAMPAIGN__DEFAULT_CHANNEL": "outbox",
        # the demo's own key for signing unsubscribe links (create a secret one in production)
        "AIRFLOW_VAR_CAMPAIGN_UNSUBSCRIBE_KEY": "demo-only-unsubscribe-signing-key",
    }


def load_dag(dag_file: Path, dag_id: str) -> Any:
    """Import ``dag_file`` and return its DAG ``dag_id``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"campaign_demo_{dag_id}", dag_file)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return next(
        v for v in vars(module).values() if getattr(v, "dag_id", None) == dag_id and hasattr(v, "test")
    )


@dataclass(frozen=True)
class Comparison:
    """Rows expected and found, and the set differences between them."""

    expected: int
    found: int
    missing: int  # expected, not found
    unexpected: int  # found, not expected

    @property
    def same(self) -> bool:
        return self.expected == self.found and not self.missing and not self.unexpected

    @property
    def sign(self) -> str:
        """``=`` when the rows are the same, ``vs`` when not."""
        return "=" if self.same else "vs"

    def differences(self) -> str:
        """What differs, e.g. ``"; 1 missing, 2 unexpected"`` (empty when nothing does)."""
        parts = [f"{self.missing} missing"] if self.missing else []
        parts += [f"{self.unexpected} unexpected"] if self.unexpected else []
        if self.expected != self.found and not parts:
            parts.append("some found more than once")
        return "; " + ", ".join(parts) if parts else ""


def compare(conn: Any, expected: sql.Composable, found: sql.Composable) -> Comparison:
    """Compare two queries of the same columns: their row counts and their rows as sets."""
    row = conn.execute(
        sql.SQL(
            "WITH e AS MATERIALIZED ({e}), f AS MATERIALIZED ({f}) SELECT (SELECT count(*) FROM e),"
            " (SELECT count(*) FROM f), (SELECT count(*) FROM (SELECT * FROM e EXCEPT SELECT * FROM f) x),"
            " (SELECT count(*) FROM (SELECT * FROM f EXCEPT SELECT * FROM e) y)"
        ).format(e=expected, f=found)
    ).fetchone()
    return Comparison(*(int(v) for v in row))


def _keys(query: str) -> sql.Composable:
    return sql.SQL("SELECT k::bigint FROM ({}) q(k)").format(sql.SQL(query))


def _table_keys(table: str, key: str) -> sql.Composable:
    return sql.SQL("SELECT {}::bigint FROM {}").format(sql.Identifier(key), sql.Identifier(*table.split(".")))


def check_population(conn: Any, label: str, recorded: int, tables: dict[str, str]) -> tuple[int | None, str]:
    """(rows expected from the inputs, what is wrong or "") for the population ``label`` of the run."""
    spec = EXPECT.get(label)
    if spec is None:
        return None, "no check for this population"
    expected = _keys(spec.keys)
    if spec.minus:
        if spec.minus not in tables:
            return None, f"no {spec.minus} population to take out"
        taken = _table_keys(tables[spec.minus], EXPECT[spec.minus].key)
        expected = sql.SQL("({}) EXCEPT ({})").format(expected, taken)
    c = compare(conn, expected, _table_keys(tables[label], spec.key))
    if spec.percent is None:
        rows, wrong = c.expected, c.differences()
    else:  # a random draw: its size, and that it draws from the selection only
        rows = int(
            conn.execute(
                sql.SQL("SELECT ceil(count(*) * {}::numeric / 100)::bigint FROM ({}) e").format(
                    sql.Literal(spec.percent), expected
                )
            ).fetchone()[0]
        )
        wrong = f"; {c.unexpected} drawn from outside the selection" if c.unexpected else ""
    if c.found != rows:
        wrong = f"; the table holds {c.found} rows{wrong}"
    if recorded != c.found:
        wrong += f"; {recorded} rows recorded for a table of {c.found}"
    return rows, wrong.removeprefix("; ")


def report(conn: Any, run_id: str) -> list[tuple[str, int, int | None, str]]:
    """(output, rows, rows expected from the inputs, what is wrong or "") per population of the run."""
    rows = conn.execute(
        "SELECT task_id, output, row_count, table_name FROM campaign.staging_tables"
        " WHERE dag_id = %s AND run_id = %s ORDER BY created_at, output",
        (DAG_ID, run_id),
    ).fetchall()
    tables = {f"{task}: {output}" if output else task: table for task, output, _, table in rows}
    out = []
    for task_id, output, count, _ in rows:
        label = f"{task_id}: {output}" if output else task_id
        expected, problem = check_population(conn, label, int(count), tables)
        out.append((label, int(count), expected, problem))
    out += [(label, 0, None, "the run made no such population") for label in EXPECT if label not in tables]
    return out


def xcom(dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
    """What a task of the demo run pushed under ``key`` (None when it pushed nothing)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=run_id, dag_ids=dag_id, task_ids=task_id, key=key)
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


Line = tuple[str, str, str, bool]  # task, what it did, what the inputs and the results say, agree


def _copy_rows(conn: Any, table: str, columns: list[str], rows: Iterator[tuple[Any, ...]]) -> None:
    """A temporary text table ``table`` (dropped at commit) holding ``rows``."""
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
            sql.Identifier(table),
            sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in columns),
        )
    )
    with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(table))) as copy:
        for row in rows:
            copy.write_row(row)


def check_audience(conn: Any, run_id: str) -> Line:
    """readers_audience: its members are the contactable profiles recomputed from the inputs."""
    saved = xcom(DAG_ID, run_id, "readers_audience")
    if not saved:
        return "readers_audience", "nothing saved", "no result in XCom", False
    members = sql.SQL(
        "SELECT m.member_key::bigint FROM campaign.audience_members m JOIN campaign.audiences a"
        " ON a.id = m.audience_id WHERE a.name = {}"
    ).format(sql.Literal(saved["audience"]))
    c = compare(conn, _keys(_CONTACTABLE), members)
    return (
        "readers_audience",
        f"audience {saved['audience']}: {saved['size']} members",
        f"{c.found} members in the audience {c.sign} the {c.expected} contactable profiles of the inputs"
        f"{c.differences()}",
        c.same and saved["size"] == c.expected,
    )


def _read_extract(path: Path) -> tuple[list[str] | None, list[tuple[str, ...]], bool]:
    """(header, rows, whether the ids increase) of a CSV file, parsed with the csv module."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        rows = [tuple(r) for r in reader]
    ids = [r[0] if r else "" for r in rows]
    ordered = all(i.isdigit() for i in ids) and all(
        int(a) < int(b) for a, b in zip(ids, ids[1:], strict=False)
    )
    return header, rows, ordered


def check_gold_file(conn: Any, run_id: str) -> Line:
    """gold_file: the file's rows are the gold segment's (id, email, locale, points) from the inputs."""
    extract = xcom(DAG_ID, run_id, "gold_file")
    if not extract:
        return "gold_file", "nothing extracted", "no result in XCom", False
    did = f"{extract['rows']} rows, {extract['bytes']} bytes: {extract['path']}"
    path = Path(extract["path"])
    if not path.exists():
        return "gold_file", did, "no such file", False
    header, rows, ordered = _read_extract(path)
    if header != GOLD_FILE_COLUMNS or any(len(r) != len(GOLD_FILE_COLUMNS) for r in rows):
        return "gold_file", did, f"header {header}, not the columns {GOLD_FILE_COLUMNS}", False
    expected = sql.SQL(
        "SELECT id::text, email, coalesce(locale, ''), loyalty_points::text FROM campaign_demo.profiles"
        " WHERE id IN ({})"
    ).format(sql.SQL(_GOLD))
    with conn.transaction():
        _copy_rows(conn, "demo_gold_file", GOLD_FILE_COLUMNS, iter(rows))
        c = compare(conn, expected, sql.SQL("SELECT * FROM demo_gold_file"))
    return (
        "gold_file",
        did,
        f"{c.found} rows in the file {c.sign} the {c.expected} gold profiles of the inputs"
        f" (id, email, locale, points){c.differences()}{'' if ordered else '; not sorted by id'}",
        c.same and ordered and extract["rows"] == c.expected,
    )


def check_points(conn: Any, run_id: str) -> Line:
    """raise_points: from the sign-up file, who must be raised; the profiles hold exactly that now."""
    points = xcom(DAG_ID, run_id, "raise_points")
    if not points:
        return "raise_points", "nothing updated", "no result in XCom", False
    accepted, to_raise = conn.execute(
        f"SELECT (SELECT count(*) FROM ({_ACCEPTED}) a), count(*) FILTER (WHERE r.points > i.loyalty_points)"
        f" FROM ({_RAISES}) r JOIN campaign_demo.profiles i ON i.id = r.id"
    ).fetchone()
    raised_now, differ = conn.execute(
        "SELECT count(*) FILTER (WHERE r.points > i.loyalty_points AND p.loyalty_points = r.points),"
        " count(*) FILTER (WHERE p.loyalty_points IS DISTINCT FROM greatest(i.loyalty_points, r.points))"
        f" FROM campaign_demo.profiles i LEFT JOIN campaign.profiles p ON p.id = i.id LEFT JOIN ({_RAISES}) r"
        " ON r.id = i.id"
    ).fetchone()
    unchanged = accepted - to_raise
    return (
        "raise_points",
        f"{points['updated']} raised, {points['unchanged']} unchanged, {points['unmatched']} unmatched",
        f"the file raises {to_raise} and leaves {unchanged}; profiles now: {raised_now} at their store"
        f" balance, {differ} not at the inputs' points raised by the file",
        (points["updated"], points["unchanged"], points["unmatched"]) == (to_raise, unchanged, 0)
        and raised_now == to_raise
        and differ == 0,
    )


def check_promotions(conn: Any, run_id: str) -> Line:
    """promotions: the sign-ups not subscribed before the run, and only they, got a subscribe event."""
    counts = xcom(DAG_ID, run_id, "promotions")
    if not counts:
        return "promotions", "nothing subscribed", "no result in XCom", False
    events = sql.SQL(
        "SELECT e.profile_id, e.operation FROM campaign.subscription_events e JOIN campaign.services v"
        " ON v.id = e.service_id WHERE v.name = 'promotions' AND e.run_id = {}"
    ).format(sql.Literal(run_id))
    expected = sql.SQL("SELECT k::bigint, 'subscribe'::text FROM ({}) q(k)").format(sql.SQL(_TO_SUBSCRIBE))
    c = compare(conn, expected, events)
    accepted, missing_now = conn.execute(
        f"SELECT (SELECT count(*) FROM ({_ACCEPTED}) a), (SELECT count(*) FROM (({_SIGNUP_IDS}) EXCEPT"
        " SELECT s.profile_id FROM campaign.subscriptions s JOIN campaign.services v ON v.id = s.service_id"
        " WHERE v.name = 'promotions') x)"
    ).fetchone()
    shown = ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, int))
    agree = (counts.get("rows"), counts.get("subscribed"), counts.get("unchanged")) == (
        accepted,
        c.expected,
        accepted - c.expected,
    )
    return (
        "promotions",
        shown,
        f"{c.found} events this run {c.sign} the {c.expected} of {accepted} sign-ups not subscribed before"
        f"{c.differences()}; {missing_now} sign-ups not subscribed now",
        c.same and agree and missing_now == 0,
    )


def _recipients(outbox: Path) -> Iterator[tuple[str]]:
    """The To: addresses of every .eml file in ``outbox`` (lower case), parsed with email.parser."""
    parser = HeaderParser()
    for path in sorted(outbox.glob("*.eml")):
        # headers may hold UTF-8 addresses (SMTPUTF8): parse the decoded text, not the bytes
        headers = parser.parsestr(path.read_text(encoding="utf-8", errors="replace"))
        addresses = [address for _, address in getaddresses(headers.get_all("To") or [])]
        for address in addresses or [""]:
            yield (address.lower(),)


def check_email(conn: Any, run_id: str, outbox: Path) -> Line:
    """gold_email: the .eml files go to the gold addresses the delivery rules keep, each once."""
    summary = xcom(DAG_ID, run_id, "gold_email", "report")
    if summary is None:
        return "gold_email", "nothing delivered", "no report in XCom", False
    sent = summary["by_status"].get("sent", 0)
    excluded = ", ".join(f"{k} {v}" for k, v in sorted(summary["excluded"].items())) or "none"
    reasons = dict(conn.execute(f"SELECT reason, count(*) FROM ({_DELIVERY}) d GROUP BY 1").fetchall())
    expected = sql.SQL("SELECT address FROM ({}) d WHERE reason IS NULL").format(sql.SQL(_DELIVERY))
    with conn.transaction():
        _copy_rows(conn, "demo_outbox", ["address"], _recipients(outbox))
        c = compare(conn, expected, sql.SQL("SELECT * FROM demo_outbox"))
    skipped = {k: v for k, v in reasons.items() if k is not None}
    shown = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none"
    return (
        "gold_email",
        f"sent {sent} of {summary['total']}; excluded: {excluded}",
        f"{c.found} .eml files {'to' if c.same else 'vs'} the {c.expected} gold addresses the inputs leave"
        f" (excluded: {shown}){c.differences()}",
        c.same and sent == c.expected and summary["excluded"] == skipped,
    )


def _outbox_json(folder: Path, key: str) -> list[str]:
    """The ``key`` of every .json message file in ``folder``."""
    return [str(json.loads(p.read_text(encoding="utf-8")).get(key)) for p in sorted(folder.glob("*.json"))]


def _valid_numbers(rows: Iterable[tuple[int, str, str | None]]) -> Iterator[tuple[int, str]]:
    """(id, E.164) of each (id, phone, country) whose phone phonenumbers reads as a valid number."""
    import phonenumbers

    for pid, phone, country in rows:
        try:
            number = phonenumbers.parse(phone, country)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            yield pid, phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _sms_numbers(conn: Any) -> set[str]:
    """The numbers the gold SMS must go to: valid, not denylisted, not quarantined."""
    return {a for (a,) in conn.execute(f"SELECT e164 FROM ({_SMS_SENT}) s")}


def check_sms(conn: Any, run_id: str, outbox: Path) -> Line:
    """gold_sms: one .json file per valid, reachable gold number, each once."""
    summary = xcom(DAG_ID, run_id, "gold_sms", "report")
    if summary is None:
        return "gold_sms", "nothing delivered", "no report in XCom", False
    expected = _sms_numbers(conn)
    found = _outbox_json(outbox, "to")
    sent = summary["by_status"].get("sent", 0)
    missing, extra = len(expected - set(found)), len(set(found) - expected)
    twice = len(found) - len(set(found))
    return (
        "gold_sms",
        f"sent {sent} of {summary['total']}; excluded: "
        + (", ".join(f"{k} {v}" for k, v in sorted(summary["excluded"].items())) or "none"),
        f"{len(found)} .json files to the {len(expected)} numbers phonenumbers finds valid and reachable"
        + (f" ({missing} missing, {extra} unexpected, {twice} twice)" if missing or extra or twice else ""),
        not missing and not extra and not twice and sent == len(expected),
    )


def check_push(conn: Any, run_id: str, outbox: Path) -> Line:
    """gold_push: one .json file per enabled install of the shop app by a gold profile."""
    summary = xcom(DAG_ID, run_id, "gold_push", "report")
    if summary is None:
        return "gold_push", "nothing delivered", "no report in XCom", False
    expected = {
        a
        for (a,) in conn.execute(
            "SELECT a.platform || ':' || a.device_token FROM campaign_demo.app_subscriptions a"
            " JOIN campaign_demo.profiles p ON p.id = a.profile_id"
            f" WHERE p.id IN ({_GOLD}) AND a.app = 'shop' AND a.enabled AND NOT p.push_denylisted"
            " AND lower(a.platform || ':' || a.device_token) NOT IN"
            " (SELECT address FROM campaign_demo.quarantine WHERE channel = 'push')"
        )
    }
    found = _outbox_json(outbox, "to")
    sent = summary["by_status"].get("sent", 0)
    missing, extra = len(expected - set(found)), len(set(found) - expected)
    twice = len(found) - len(set(found))
    return (
        "gold_push",
        f"sent {sent} to {sent} devices; excluded: "
        + (", ".join(f"{k} {v}" for k, v in sorted(summary["excluded"].items())) or "none"),
        f"{len(found)} .json files to the {len(expected)} devices of the app the gold profiles have"
        + (f" ({missing} missing, {extra} unexpected, {twice} twice)" if missing or extra or twice else ""),
        not missing and not extra and not twice and sent == len(expected),
    )


def activities(conn: Any, run_id: str, workdir: Path) -> list[Line]:
    """(task, what it did, what the inputs and its results say, whether they agree) per using task."""
    return [
        check_audience(conn, run_id),
        check_gold_file(conn, run_id),
        check_points(conn, run_id),
        check_promotions(conn, run_id),
        check_email(conn, run_id, workdir / "outbox"),
        check_sms(conn, run_id, workdir / "outbox_sms"),
        check_push(conn, run_id, workdir / "outbox_push"),
    ]


def clear_outputs(work: Path) -> int:
    """Remove a previous demo's gold extracts and message files (the checks read them); how many."""
    old = [
        *(work / "out").glob("gold_customers_*"),
        *(work / "outbox").glob("*.eml"),
        *(work / "outbox_sms").glob("*.json"),
        *(work / "outbox_push").glob("*.json"),
    ]
    for path in old:
        path.unlink()
    return len(old)


def prepare(work: Path, url: str, profiles: int) -> dict[str, int]:
    """The demo's data before a run, on the server at ``url``: the campaign schema, ``profiles``
    seeded profiles (a previous demo's history replaced), the sign-up file and the inputs the
    checks read; the sign-up file's row counts. ``make demo`` and a first ``make ui`` start here."""
    import psycopg

    from airflow_campaign.schema import migrate
    from airflow_campaign.seed import history, seed

    with psycopg.connect(url, autocommit=True) as conn:
        migrate.upgrade(conn)
        print(f"campaign schema at version {migrate.current_version(conn)}")
        t = time.monotonic()
        replaced = history(conn)  # the demo's own database: a previous demo's runs are replaced
        counts = seed(conn, profiles, force=True)
        files = clear_outputs(work)
        if files:
            replaced["files in out/ and outbox/"] = files
        if replaced:
            print(
                "replaced the previous demo's history: "
                + "; ".join(f"{what}: {n}" for what, n in replaced.items())
            )
        print(f"seeded {counts['profiles']} profiles in {time.monotonic() - t:.1f}s", flush=True)
        signups = write_signups(conn, work / "in" / "store_signups.csv")
        record_inputs(conn, work / "in" / "store_signups.csv")
    return signups


def run_demo(profiles: int = 100_000, workdir: str = ".campaign") -> int:
    """Start the embedded server, create and seed the schema, run the demo DAG, print the report."""
    import psycopg

    from airflow_campaign import embedded

    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    server = embedded.start(work / "pg")
    print(f"embedded Postgres: {server.url}")
    signups = prepare(work, server.url, profiles)
    env = airflow_env(work, server.url)
    os.environ.update(env)
    print("preparing Airflow's metadata database (SQLite) ...")
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=os.environ
    )
    print(f"running DAG {DAG_ID} with dag.test() ...")
    warnings.filterwarnings("ignore", message=".*httpx.*")
    dag_run = load_dag(Path("dags_examples") / f"{DAG_ID}.py", DAG_ID).test()
    state = str(getattr(dag_run, "state", "unknown"))
    with psycopg.connect(server.url, autocommit=True) as conn:
        lines = report(conn, dag_run.run_id)
        used = activities(conn, dag_run.run_id, work)
    print()
    print(f"DAG run {dag_run.run_id}: {state}")
    print("expected: the same selection recomputed in SQL from the inputs as they were before the run")
    print(f"{'task / output':<28} {'rows':>8} {'expected':>9}")
    mismatches = 0
    for label, count, expected, problem in lines:
        shown = "" if expected is None else f"{expected:>9}"
        print(f"{label:<28} {count:>8} {shown:>9}" + (f"  MISMATCH: {problem}" if problem else ""))
        mismatches += bool(problem)
    print(f"\n{'task':<18} what it did / what the inputs and its results say")
    for task, did, check, ok in used:
        print(f"{task:<18} {did}")
        print(f"{'':<18}   check: {check}{'' if ok else '  MISMATCH'}")
        mismatches += not ok
    print(
        f"\nstore_signups.csv had {signups['known']} known, {signups['unknown']} unknown and "
        f"{signups['bad_points']} bad-points rows"
    )
    print(f"done in {time.monotonic() - started:.0f}s; data in {work}")
    return 0 if state.endswith("success") and not mismatches else 1
