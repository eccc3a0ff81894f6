"""Deterministic synthetic data: profiles that look real, services, subscriptions, audiences."""

from __future__ import annotations

from typing import Any

from airflow_campaign.errors import CampaignError

FIRST_NAMES = [
    "Emma",
    "Louis",
    "Olivia",
    "Liam",
    "Sophia",
    "Noah",
    "Mia",
    "Lucas",
    "Chloe",
    "Hugo",
    "Léa",
    "Jules",
    "Ava",
    "Mateo",
    "Isabella",
    "Ethan",
    "Amelia",
    "Leon",
    "Hannah",
    "Paul",
    "Lucía",
    "Martín",
    "Sofía",
    "Hiroshi",
    "Yuki",
    "Sakura",
    "Haruto",
    "Ana",
    "João",
    "Beatriz",
    "Oliver",
    "Charlotte",
    "Jack",
    "Grace",
    "Felix",
    "Marie",
    "Anna",
    "David",
    "Sara",
    "Omar",
]
LAST_NAMES = [
    "Martin",
    "Bernard",
    "Dubois",
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "García",
    "Fernández",
    "López",
    "Martínez",
    "Silva",
    "Santos",
    "Oliveira",
    "Souza",
    "Sato",
    "Suzuki",
    "Takahashi",
    "Tanaka",
    "Taylor",
    "Davies",
    "Evans",
    "Wilson",
    "Moreau",
    "Laurent",
    "Lefebvre",
    "Weber",
    "Wagner",
    "Rossi",
    "Costa",
    "Pereira",
    "Nakamura",
    "Clark",
    "Lewis",
    "Walker",
]
DOMAINS = ["example.com", "mail.example.org", "inbox.example.net", "post.example.fr", "webmail.example.de"]
# country, locale, time zone, dialling code, national trunk prefix, number of national digits
COUNTRIES = [
    ("FR", "fr_FR", "Europe/Paris", "33", "0", 9, "6"),
    ("US", "en_US", "America/New_York", "1", "", 10, "212"),
    ("GB", "en_GB", "Europe/London", "44", "0", 10, "7"),
    ("DE", "de_DE", "Europe/Berlin", "49", "0", 10, "17"),
    ("ES", "es_ES", "Europe/Madrid", "34", "", 9, "6"),
    ("BR", "pt_BR", "America/Sao_Paulo", "55", "0", 11, "119"),
    ("JP", "ja_JP", "Asia/Tokyo", "81", "0", 10, "90"),
]
# (country, locale, time zone, calling code, trunk prefix, national digits, mobile prefix): a
# number is the mobile prefix and random digits, so most are valid for phonenumbers (the rest,
# and the '00' form of a country whose international prefix is not 00, are invalid ones).
SERVICES = [
    ("newsletter", "Weekly newsletter", "email", 0.60),
    ("promotions", "Offers and promotions", "email", 0.30),
    ("sms_alerts", "SMS alerts", "sms", 0.20),
    ("app_news", "App notifications", "push", 0.15),
]
ANCHOR = "2026-01-01 00:00:00+00"


def _array(values: list[str]) -> str:
    return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]::text[]"


def _profiles_sql() -> str:
    countries = (
        "(VALUES "
        + ", ".join(
            f"({i}, '{c}', '{loc}', '{tz}', '{cc}', '{trunk}', {n}, '{mobile}')"
            for i, (c, loc, tz, cc, trunk, n, mobile) in enumerate(COUNTRIES)
        )
        + ") AS c(idx, country, locale, time_zone, cc, trunk, digits, mobile)"
    )
    return f"""
    INSERT INTO campaign.profiles (id, email, phone, first_name, last_name, locale, country, time_zone,
        birth_date, loyalty_points, last_purchase_at, email_denylisted, sms_denylisted, push_denylisted,
        created_at, updated_at)
    SELECT g.i,
        CASE WHEN h.e %% 100 < 2 THEN NULL
             WHEN h.e %% 100 < 5 THEN lower(translate(fn.v, 'éíúóáü', 'eiuoau')) || h.j || '.at.' || dom.v
             WHEN h.e %% 100 = 5 THEN lower(translate(fn.v, 'éíúóáü', 'eiuoau')) || h.j || '@@' || dom.v
             ELSE lower(translate(efn.v || '.' || eln.v, 'éíúóáüÉ', 'eiuoaue')) || h.j || '@' || dom.v END,
        CASE WHEN h.p %% 100 < 8 THEN NULL
             WHEN h.p %% 3 = 0 THEN '+' || c.cc || c.mobile || lpad((h.p %% (10::bigint ^ (c.digits - length(c.mobile)))::bigint)::text, c.digits - length(c.mobile), '0')
             WHEN h.p %% 3 = 1 THEN c.trunk || regexp_replace(c.mobile || lpad((h.p %% (10::bigint ^ (c.digits - length(c.mobile)))::bigint)::text,
                 c.digits - length(c.mobile), '0'), '(\\d{{2}})(?=\\d)', '\\1 ', 'g')
             ELSE '00' || c.cc || '-' || c.mobile || lpad((h.p %% (10::bigint ^ (c.digits - length(c.mobile)))::bigint)::text, c.digits - length(c.mobile), '0') END,
        fn.v, ln.v, c.locale, c.country, c.time_zone,
        date '1950-01-01' + (h.b %% 20089)::int,
        (h.l %% 10000)::int,
        CASE WHEN h.l %% 7 = 0 THEN NULL ELSE timestamptz '{ANCHOR}' - make_interval(secs => (h.b %% 63072000)::float8) END,
        h.d %% 100 = 0, h.d %% 100 = 1, h.d %% 200 = 2,
        timestamptz '{ANCHOR}' - make_interval(days => (h.b %% 1500)::int),
        timestamptz '{ANCHOR}'
    FROM generate_series(1, %(n)s::bigint) AS g(i)
    CROSS JOIN LATERAL (SELECT abs(hashint8extended(g.i, %(seed)s)) AS a,
                               abs(hashint8extended(g.i, %(seed)s + 1)) AS e,
                               abs(hashint8extended(g.i, %(seed)s + 2)) AS p,
                               abs(hashint8extended(g.i, %(seed)s + 3)) AS b,
                               abs(hashint8extended(g.i, %(seed)s + 4)) AS l,
                               abs(hashint8extended(g.i, %(seed)s + 5)) AS d,
                               CASE WHEN abs(hashint8extended(g.i, %(seed)s + 6)) %% 50 = 0 AND g.i > 1
                                    THEN g.i - 1 ELSE g.i END AS j) h
    CROSS JOIN LATERAL (SELECT abs(hashint8extended(h.j, %(seed)s)) AS ja) hj
    JOIN {countries} ON c.idx = (h.a / 7) %% {len(COUNTRIES)}
    CROSS JOIN LATERAL (SELECT ({_array(FIRST_NAMES)})[1 + h.a %% {len(FIRST_NAMES)}] AS v) fn
    CROSS JOIN LATERAL (SELECT ({_array(LAST_NAMES)})[1 + (h.a / 1000) %% {len(LAST_NAMES)}] AS v) ln
    CROSS JOIN LATERAL (SELECT ({_array(FIRST_NAMES)})[1 + hj.ja %% {len(FIRST_NAMES)}] AS v) efn
    CROSS JOIN LATERAL (SELECT ({_array(LAST_NAMES)})[1 + (hj.ja / 1000) %% {len(LAST_NAMES)}] AS v) eln
    CROSS JOIN LATERAL (SELECT ({_array(DOMAINS)})[1 + (hj.ja / 100000) %% {len(DOMAINS)}] AS v) dom
    """


SEEDED_AUDIENCES = ("vip", "do_not_contact")
# What seeding deletes that the seed did not make: the history of deliveries and subscriptions.
# (Emptying the services empties every table that refers to them, the deliveries' ledger too.)
HISTORY: dict[str, str] = {
    "delivery log rows (the ledger: who was sent what)": "SELECT count(*) FROM campaign.delivery_logs",
    "delivery occurrences": "SELECT count(*) FROM campaign.delivery_occurrences",
    "deliveries": "SELECT count(*) FROM campaign.deliveries",
    "subscription events not made by the seed": (
        "SELECT count(*) FROM campaign.subscription_events WHERE run_id IS NOT NULL OR origin IS DISTINCT FROM 'seed'"
    ),
    "audiences not made by the seed": (
        "SELECT count(*) FROM campaign.audiences WHERE name <> ALL(%(audiences)s::text[])"
    ),
    "quarantine entries not made by the seed": (
        "SELECT count(*) FROM campaign.quarantine WHERE since <> %(anchor)s::timestamptz"
    ),
}
HISTORY_TABLES = (
    "campaign.delivery_logs, campaign.delivery_occurrences, campaign.deliveries, campaign.subscription_events,"
    " campaign.audiences, campaign.quarantine"
)


def history(conn: Any) -> dict[str, int]:
    """What seeding would delete that the seed did not make, by kind: only the kinds with rows."""
    params = {"audiences": list(SEEDED_AUDIENCES), "anchor": ANCHOR}
    counts = {what: int(conn.execute(query, params).fetchone()[0]) for what, query in HISTORY.items()}
    return {what: n for what, n in counts.items() if n}


def check_no_history(conn: Any) -> None:
    """Raise, saying what would be lost and how much, when the database holds history."""
    found = history(conn)
    if found:
        lost = "; ".join(f"{what}: {n:,}" for what, n in found.items())
        raise CampaignError(
            f"seed: this database holds history that seeding would delete: {lost}. Seeding replaces the "
            "profiles, services, subscriptions, quarantine and audiences, and emptying the services empties "
            "the deliveries and their ledger with them (a delivery would then send again to people it "
            "already sent to). Seed a test database; to delete this history and seed anyway, pass --force "
            "(force=True from Python)."
        )


def seed(conn: Any, profiles: int, seed: int = 42, *, force: bool = False) -> dict[str, int]:
    """Replace the profile data with ``profiles`` synthetic profiles; return row counts.

    The same ``profiles`` and ``seed`` always give the same rows. Existing profiles,
    subscriptions, quarantine entries, app subscriptions and audiences are removed first, and
    with the services the deliveries and their ledger. A database that holds history the seed
    did not make (``history``: delivery logs, occurrences, subscription events, audiences,
    quarantine entries) is refused, nothing deleted, unless ``force``.
    """
    from airflow_campaign.schema.migrate import require_current

    if profiles < 0:
        raise CampaignError(f"--profiles: {profiles} is negative; give a count of profiles (0 or more).")
    require_current(conn, "seed")
    params = {"n": profiles, "seed": seed}
    with conn.transaction():
        if not force:  # counted under lock: nothing can add history between the check and the delete
            conn.execute(f"LOCK TABLE {HISTORY_TABLES} IN ACCESS EXCLUSIVE MODE")
            check_no_history(conn)
        conn.execute(
            "TRUNCATE campaign.profiles, campaign.subscriptions, campaign.subscription_events,"
            " campaign.quarantine, campaign.app_subscriptions, campaign.audience_members,"
            " campaign.audience_sizes, campaign.audiences, campaign.services, campaign.feedback_events"
            " RESTART IDENTITY CASCADE"
        )
        conn.execute("DROP INDEX IF EXISTS campaign.profiles_email_idx")
        conn.execute("DROP INDEX IF EXISTS campaign.profiles_phone_idx")
        conn.execute(_profiles_sql(), params)
        conn.execute("CREATE INDEX profiles_email_idx ON campaign.profiles (lower(email))")
        conn.execute("CREATE INDEX profiles_phone_idx ON campaign.profiles (phone)")
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('campaign.profiles', 'id'), greatest(%s, 1))", (profiles,)
        )
        for name, label, channel, _ in SERVICES:
            conn.execute(
                "INSERT INTO campaign.services (name, label, channel) VALUES (%s, %s, %s)",
                (name, label, channel),
            )
        for offset, (name, _, _, share) in enumerate(SERVICES):
            conn.execute(
                "INSERT INTO campaign.subscriptions (service_id, profile_id, subscribed_at, origin)"
                " SELECT s.id, p.id, %(anchor)s::timestamptz - make_interval(days => (abs(hashint8extended(p.id, %(seed)s + 20 + %(o)s)) %% 700)::int),"
                " 'seed' FROM campaign.profiles p, campaign.services s WHERE s.name = %(name)s"
                " AND abs(hashint8extended(p.id, %(seed)s + 10 + %(o)s)) %% 1000 < %(permille)s",
                {"anchor": ANCHOR, "seed": seed, "o": offset, "name": name, "permille": int(share * 1000)},
            )
        conn.execute(
            "INSERT INTO campaign.subscription_events (service_id, profile_id, operation, event_at, origin)"
            " SELECT service_id, profile_id, 'subscribe', subscribed_at, origin FROM campaign.subscriptions"
        )
        conn.execute(
            "INSERT INTO campaign.quarantine (channel, address, reason, since)"
            " SELECT DISTINCT ON (lower(email)) 'email', lower(email),"
            " (ARRAY['hard_bounce', 'soft_bounces', 'complaint'])[1 + id %% 3], %(anchor)s::timestamptz"
            " FROM campaign.profiles WHERE email LIKE '%%@%%' AND abs(hashint8extended(id, %(seed)s + 30)) %% 100 = 0"
            " ORDER BY lower(email), id",
            {"anchor": ANCHOR, "seed": seed},
        )
        # STOP replies: quarantined as the SMS feedback records them, in E.164 (the seed's three
        # spellings: +<cc><digits>, 00<cc>-<digits>, <trunk><digits> with spaces)
        dialling = (
            "(VALUES "
            + ", ".join(f"('{c}', '{cc}', '{trunk}')" for c, _, _, cc, trunk, _, _ in COUNTRIES)
            + ")"
        )
        conn.execute(
            "INSERT INTO campaign.quarantine (channel, address, reason, since)"
            " SELECT DISTINCT ON (e164) 'sms', e164, 'denylist', %(anchor)s::timestamptz FROM ("
            "  SELECT p.id, CASE WHEN p.phone LIKE '+%%' THEN '+' || d.digits"
            "   WHEN p.phone LIKE '00%%' THEN '+' || substr(d.digits, 3)"
            "   ELSE '+' || c.cc || substr(d.digits, length(c.trunk) + 1) END AS e164"
            "  FROM campaign.profiles p"
            f" JOIN {dialling} AS c(country, cc, trunk) ON c.country = p.country"
            "  CROSS JOIN LATERAL (SELECT regexp_replace(p.phone, '[^0-9]', '', 'g') AS digits) d"
            "  WHERE p.phone IS NOT NULL AND abs(hashint8extended(p.id, %(seed)s + 31)) %% 200 = 0) q"
            " ORDER BY e164, id",
            {"anchor": ANCHOR, "seed": seed},
        )
        conn.execute(
            "INSERT INTO campaign.app_subscriptions (profile_id, app, platform, device_token, endpoint)"
            " SELECT id, 'shop', CASE WHEN id %% 2 = 0 THEN 'ios' ELSE 'android' END,"
            " md5('token' || id || %(seed)s::text), NULL FROM campaign.profiles"
            " WHERE abs(hashint8extended(id, %(seed)s + 40)) %% 100 < 15",
            {"seed": seed},
        )
        audiences = {
            "vip": "loyalty_points >= 9500",
            "do_not_contact": "abs(hashint8extended(id, %(seed)s + 50)) %% 200 = 0",
        }
        for name, where in audiences.items():
            audience_id = conn.execute(
                "INSERT INTO campaign.audiences (name, type) VALUES (%s, 'list') RETURNING id", (name,)
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO campaign.audience_members (audience_id, member_key)"
                f" SELECT %(aid)s, id::text FROM campaign.profiles WHERE {where}",  # noqa: S608 - fixed text above
                {"aid": audience_id, "seed": seed},
            )
            conn.execute(
                "UPDATE campaign.audiences SET row_count = (SELECT count(*) FROM campaign.audience_members"
                " WHERE audience_id = %(aid)s) WHERE id = %(aid)s",
                {"aid": audience_id},
            )
            conn.execute(
                "INSERT INTO campaign.audience_sizes (audience_id, size) SELECT id, row_count FROM campaign.audiences"
                " WHERE id = %s",
                (audience_id,),
            )
    conn.execute("ANALYZE campaign.profiles")
    counts = {}
    for table in (
        "profiles",
        "services",
        "subscriptions",
        "quarantine",
        "app_subscriptions",
        "audience_members",
    ):
        counts[table] = conn.execute(f"SELECT count(*) FROM campaign.{table}").fetchone()[0]  # noqa: S608
    return counts
