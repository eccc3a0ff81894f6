"""SegmentationOperator: one population per segment code, random or ordered sampling."""

from __future__ import annotations

import math

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from airflow_campaign.errors import CampaignError
from airflow_campaign.operators.targeting import QueryOperator, SegmentationOperator
from tests.conftest import count, ids, rows, staged


@pytest.fixture
def base(context):
    return QueryOperator(task_id="base", where="id <= 1000", columns=["country", "loyalty_points"]).execute(
        context("base")
    )


def split(context, task_id, population, segments, run_id=None, **kwargs):
    ctx = context(task_id, run_id=run_id)
    out = SegmentationOperator(task_id=task_id, population=population, segments=segments, **kwargs).execute(
        ctx
    )
    return out, ctx


def test_where_limit_and_complement_with_xcom_per_code(db, context, base):
    out, ctx = split(
        context,
        "seg",
        base,
        [
            {"code": "fr", "where": "country = 'FR'"},
            {"code": "rich", "where": "loyalty_points >= 8000", "limit": 30},
        ],
    )
    assert list(out) == ["fr", "rich", "others"]
    assert ctx["ti"].xcoms == out
    fr = [
        r[0]
        for r in db.execute(
            "SELECT id FROM campaign.profiles WHERE id <= 1000 AND country = 'FR' ORDER BY id"
        )
    ]
    rich = [
        r[0]
        for r in db.execute(
            "SELECT id FROM campaign.profiles WHERE id <= 1000 AND country <> 'FR' AND loyalty_points >= 8000"
            " ORDER BY id LIMIT 30"
        )
    ]
    assert ids(db, out["fr"]) == fr
    assert ids(db, out["rich"]) == rich
    assert ids(db, out["others"]) == sorted(set(range(1, 1001)) - set(fr) - set(rich))
    for code, pop in out.items():
        assert pop["columns"] == ["id", "country", "loyalty_points", "segment_code"]
        assert {r["segment_code"] for r in rows(db, pop)} == {code}
        assert (pop["key"], pop["resource"]) == ("id", "profiles")


def test_percent_of_the_matching_rows(db, context, base):
    out, _ = split(context, "seg_pct", base, [{"code": "de", "where": "country = 'DE'", "percent": 10}])
    de = count(db, "SELECT count(*) FROM campaign.profiles WHERE id <= 1000 AND country = 'DE'")
    assert out["de"]["count"] == math.ceil(de * 10 / 100)
    assert out["others"]["count"] == 1000 - out["de"]["count"]


def test_order_by_takes_the_top_rows(db, context, base):
    out, _ = split(
        context,
        "seg_top",
        base,
        [{"code": "top", "order_by": "loyalty_points DESC", "limit": 10}],
        complement=False,
    )
    assert list(out) == ["top"]
    expected = [
        r[0]
        for r in db.execute(
            "SELECT id FROM campaign.profiles WHERE id <= 1000 ORDER BY loyalty_points DESC, id LIMIT 10"
        )
    ]
    assert ids(db, out["top"]) == sorted(expected)


def test_random_sampling_is_deterministic_for_a_seed(db, context, base):
    segments = [{"code": "test", "random": True, "limit": 50}]
    a, _ = split(context, "seg_rand_a", base, segments, seed="42")
    b, _ = split(context, "seg_rand_b", base, segments, seed="42")
    c, _ = split(context, "seg_rand_c", base, segments, seed="43")
    assert ids(db, a["test"]) == ids(db, b["test"])
    assert ids(db, a["test"]) != ids(db, c["test"])
    assert ids(db, a["test"]) != list(range(1, 51))  # not just the first keys
    assert a["test"]["count"] == 50


def test_random_sampling_defaults_to_the_run_id(db, context, base):
    segments = [{"code": "ctrl", "random": True, "percent": 5}]
    first, _ = split(context, "seg_run", base, segments, run_id="run_a")
    retry, _ = split(context, "seg_run", base, segments, run_id="run_a")
    assert first["ctrl"]["table"] == retry["ctrl"]["table"]
    first_ids = ids(db, retry["ctrl"])
    other, _ = split(context, "seg_run", base, segments, run_id="run_b")
    assert len(first_ids) == 50
    assert ids(db, other["ctrl"]) != first_ids


def _drawn(db, where, code, seed, n):
    """The documented random draw, computed here: the first ``n`` rows of ``base`` matching
    ``where`` in the order of a hash of seed, code and key (ties by key)."""
    return sorted(
        r[0]
        for r in db.execute(
            "SELECT id FROM campaign.profiles WHERE id <= 1000 AND " + where + " ORDER BY"
            " hashtextextended(%s || '/' || %s || '/' || id::text, 0), id LIMIT %s",
            (seed, code, n),
        )
    )


def test_random_draws_follow_the_documented_hash_order(db, context, base):
    """A small limit, a share (cut near its expected hash) and a share capped by a limit."""
    out, _ = split(
        context,
        "seg_hash",
        base,
        [
            {"code": "fr", "where": "country = 'FR'", "limit": 7, "random": True},
            {"code": "ctrl", "percent": 10, "random": True},
            {"code": "capped", "percent": 50, "limit": 20, "random": True},
        ],
        seed="s1",
    )
    fr = _drawn(db, "country = 'FR'", "fr", "s1", 7)
    assert ids(db, out["fr"]) == fr
    rest = f"id NOT IN ({', '.join(map(str, fr))})"
    ctrl = _drawn(db, rest, "ctrl", "s1", math.ceil(993 * 10 / 100))
    assert ids(db, out["ctrl"]) == ctrl
    rest += f" AND id NOT IN ({', '.join(map(str, ctrl))})"
    assert ids(db, out["capped"]) == _drawn(db, rest, "capped", "s1", 20)
    assert out["others"]["count"] == 1000 - 7 - 100 - 20


def test_a_segment_after_an_ordered_one_gets_the_rows_it_left(db, context, base):
    out, _ = split(
        context,
        "seg_after_top",
        base,
        [
            {"code": "top", "order_by": "loyalty_points DESC", "limit": 10},
            {"code": "rich", "where": "loyalty_points >= 9000"},
            {"code": "next", "order_by": "loyalty_points DESC", "percent": 1},
        ],
    )
    ranked = [
        r[0]
        for r in db.execute(
            "SELECT id FROM campaign.profiles WHERE id <= 1000 ORDER BY loyalty_points DESC, id"
        )
    ]
    rich = count(db, "SELECT count(*) FROM campaign.profiles WHERE id <= 1000 AND loyalty_points >= 9000")
    assert ids(db, out["top"]) == sorted(ranked[:10])
    assert ids(db, out["rich"]) == sorted(ranked[10:rich])  # the top 10 are all rich
    assert out["next"]["count"] == math.ceil((1000 - rich) / 100)
    assert ids(db, out["next"]) == sorted(ranked[rich : rich + out["next"]["count"]])
    assert out["others"]["count"] == 1000 - rich - out["next"]["count"]


def test_rows_sharing_a_key_are_segmented_one_by_one(db, context):
    """Without a unique key each row is drawn on its own: a limit keeps exactly that many rows."""
    population = [{"id": 1 + i % 3, "n": i} for i in range(12)]  # keys 1, 2, 3, four rows each
    out, _ = split(
        context,
        "seg_dupes",
        population,
        [
            {"code": "first", "limit": 5},
            {"code": "lucky", "limit": 2, "random": True},
            {"code": "big", "order_by": "n DESC", "limit": 2},
        ],
    )
    got = {code: sorted((r["id"], r["n"]) for r in rows(db, pop, order_by="n")) for code, pop in out.items()}
    assert got["first"] == sorted((1 + i % 3, i) for i in (0, 3, 6, 9, 1))  # keys 1, 1, 1, 1, 2
    assert len(got["lucky"]) == 2
    left = sorted(set(range(12)) - {n for _, n in got["first"] + got["lucky"]})
    assert [n for _, n in got["big"]] == sorted(left)[-2:]
    assert sorted(n for pop in got.values() for _, n in pop) == list(range(12))


def test_a_limit_in_key_order_counts_rows_without_a_key_last(db, context):
    population = [{"id": 3}, {"id": None}, {"id": 1}, {"id": None}, {"id": 2}]
    out, _ = split(context, "seg_nulls", population, [{"code": "four", "limit": 4}])
    assert [r["id"] for r in rows(db, out["four"])] == [1, 2, 3, None]
    assert [r["id"] for r in rows(db, out["others"])] == [None]


def test_sizes_zero_and_all(db, context, base):
    out, _ = split(
        context,
        "seg_sizes",
        base,
        [
            {"code": "none", "limit": 0},
            {"code": "no_share", "percent": 0, "random": True},
            {"code": "fr", "where": "country = 'FR'", "percent": 100, "random": True},
            {"code": "many", "where": "country = 'DE'", "limit": 100000},
        ],
    )
    fr = count(db, "SELECT count(*) FROM campaign.profiles WHERE id <= 1000 AND country = 'FR'")
    de = count(db, "SELECT count(*) FROM campaign.profiles WHERE id <= 1000 AND country = 'DE'")
    assert [out[c]["count"] for c in ("none", "no_share", "fr", "many")] == [0, 0, fr, de]
    assert out["others"]["count"] == 1000 - fr - de


def test_a_table_of_the_dag_authors_is_read_once(db, context):
    """A trusted view (no row ids of its own) is copied once, then segmented like a staging table."""
    from airflow_campaign.population import Population

    db.execute(
        "CREATE OR REPLACE VIEW public.seg_view AS SELECT id, loyalty_points FROM campaign.profiles WHERE id <= 100"
    )
    try:
        pop = Population.from_table("public.seg_view", key="id", trusted=True)
        out, _ = split(
            context,
            "seg_view",
            pop,
            [
                {"code": "top", "order_by": "loyalty_points DESC", "limit": 5},
                {"code": "ctl", "percent": 10, "random": True},
            ],
        )
    finally:
        db.execute("DROP VIEW public.seg_view")
    assert [out[c]["count"] for c in ("top", "ctl", "others")] == [5, 10, 85]
    assert len(set(ids(db, out["top"]) + ids(db, out["ctl"]) + ids(db, out["others"]))) == 100


def test_overlap_lets_a_row_be_in_several_segments(db, context, base):
    segments = [
        {"code": "fr", "where": "country = 'FR'"},
        {"code": "rich", "where": "loyalty_points >= 5000"},
    ]
    apart, _ = split(context, "seg_apart", base, segments)
    together, _ = split(context, "seg_overlap", base, segments, overlap=True, complement_code="rest")
    both = set(ids(db, together["fr"])) & set(ids(db, together["rich"]))
    assert both
    assert not set(ids(db, apart["fr"])) & set(ids(db, apart["rich"]))
    assert set(ids(db, together["rest"])) == set(range(1, 1001)) - set(ids(db, together["fr"])) - set(
        ids(db, together["rich"])
    )
    assert together["rest"]["count"] == apart["others"]["count"]


def test_overlap_draws_each_segment_among_every_row(db, context, base):
    segments = [
        {"code": "fr", "where": "country = 'FR'"},
        {"code": "ctrl", "percent": 20, "random": True},
        {"code": "top", "order_by": "loyalty_points DESC", "limit": 50},
    ]
    out, _ = split(context, "seg_overlap_draw", base, segments, overlap=True, seed="o")
    assert out["ctrl"]["count"] == 200
    assert ids(db, out["ctrl"]) == _drawn(db, "true", "ctrl", "o", 200)
    assert set(ids(db, out["fr"])) & set(ids(db, out["ctrl"]))
    taken = set(ids(db, out["fr"])) | set(ids(db, out["ctrl"])) | set(ids(db, out["top"]))
    assert set(ids(db, out["others"])) == set(range(1, 1001)) - taken


def test_a_population_already_segmented_is_segmented_again(db, context, base):
    first, _ = split(context, "seg_1", base, [{"code": "fr", "where": "country = 'FR'"}])
    again, _ = split(context, "seg_2", first["fr"], [{"code": "rich", "where": "loyalty_points >= 5000"}])
    assert {r["segment_code"] for r in rows(db, again["others"])} == {"others"}
    assert again["rich"]["columns"].count("segment_code") == 1


def test_bad_segment_sql_names_the_segment_and_leaves_nothing(db, context, base):
    ctx = context("seg_bad")
    with pytest.raises(
        CampaignError, match=r"segments\[1\]: the database rejected the SQL \(UndefinedColumn"
    ):
        SegmentationOperator(
            task_id="seg_bad", population=base, segments=[{"code": "a"}, {"code": "b", "where": "tier = 1"}]
        ).execute(ctx)
    assert staged(db, ctx, suffixes=("a", "b", "others")) == []


def test_all_segments_empty_follow_on_empty(db, context, base):
    ctx = context("seg_empty")
    with pytest.raises(AirflowSkipException, match="segmentation is empty"):
        SegmentationOperator(
            task_id="seg_empty",
            population=[],
            segments=[{"code": "a", "where": "false"}],
            on_empty="skip",
        ).execute(ctx)
    assert staged(db, ctx, suffixes=("a", "others")) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"segments": []}, "segments: give at least one segment"),
        ({"segments": [{"code": "a b"}]}, r"segments\[0\].code='a b': use letters, digits and _"),
        ({"segments": [{"where": "true"}]}, r"segments\[0\].code=None"),
        (
            {"segments": [{"code": "return_value"}]},
            r"segments\[0\].code=.return_value.: .* Airflow.s own key",
        ),
        ({"segments": [{"code": "A"}], "complement_code": "1x"}, r"complement_code=.1x.: use letters"),
        ({"segments": [{"code": "a"}, {"code": "a"}]}, r"codes must be unique .* \['a', 'a', 'others'\]"),
        ({"segments": [{"code": "others"}]}, r"codes must be unique"),
        ({"segments": [{"code": "a", "size": 3}]}, r"segments\[0\]: unknown option\(s\) \['size'\]"),
        (
            {"segments": [{"code": "a", "percent": 120}]},
            r"segments\[0\].percent=120: give a number between 0 and 100",
        ),
        ({"segments": [{"code": "a", "limit": -5}]}, r"segments\[0\].limit=-5: give a whole number >= 0"),
    ],
)
def test_bad_options_fail_at_parse_time(kwargs, message):
    with pytest.raises(CampaignError, match=message):
        SegmentationOperator(task_id="parse", population=[{"id": 1}], **kwargs)
