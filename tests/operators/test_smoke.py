from airflow_campaign.operators.targeting import (
    DeduplicationOperator,
    EnrichmentOperator,
    ExclusionOperator,
    IncrementalQueryOperator,
    IntersectionOperator,
    LoadFileOperator,
    QueryOperator,
    ReadAudienceOperator,
    SegmentationOperator,
    UnionOperator,
)
from tests.conftest import count


def test_smoke(db, context, tmp_path):
    fr = QueryOperator(task_id="fr", where="country = 'FR'", columns=["email", "loyalty_points"]).execute(
        context("fr")
    )
    assert fr["count"] == count(db, "select count(*) from campaign.profiles where country='FR'")
    news = QueryOperator(
        task_id="news",
        sql="select profile_id as id from campaign.subscriptions s join campaign.services v on v.id = s.service_id where v.name = 'newsletter'",
    ).execute(context("news"))
    inter = IntersectionOperator(task_id="i", populations=[fr, news]).execute(context("i"))
    uni = UnionOperator(task_id="u", populations=[fr, news]).execute(context("u"))
    dnc = ReadAudienceOperator(task_id="dnc", audience="do_not_contact").execute(context("dnc"))
    exc = ExclusionOperator(task_id="x", primary=inter, exclude=[dnc]).execute(context("x"))
    ded = DeduplicationOperator(
        task_id="d", population=exc, on=["email"], prefer="loyalty_points DESC"
    ).execute(context("d"))
    enr = EnrichmentOperator(
        task_id="e",
        population=ded,
        columns={"locale": "r.locale"},
        joins=[
            {
                "table": "campaign.subscriptions",
                "alias": "s",
                "on": "s.profile_id = p.id",
                "kind": "many",
                "columns": {"n_subs": "count(*)"},
            }
        ],
    ).execute(context("e"))
    seg = SegmentationOperator(
        task_id="s",
        population=enr,
        segments=[
            {"code": "vip", "where": "loyalty_points >= 5000"},
            {"code": "test", "percent": 10, "random": True},
        ],
    ).execute(context("s"))
    print(
        fr["count"],
        news["count"],
        inter["count"],
        uni["count"],
        dnc["count"],
        exc["count"],
        ded["count"],
        enr["count"],
        {k: v["count"] for k, v in seg.items()},
    )
    p = tmp_path / "f.csv"
    p.write_text(
        "email,points\n"
        + "\n".join(
            f"{r[0]},{i}"
            for i, r in enumerate(
                db.execute("select email from campaign.profiles where id <= 20 order by id")
            )
        )
        + "\nnobody@x.org,1\nbad,zz\n"
    )
    ctx = context("load")
    lf = LoadFileOperator(
        task_id="load", path=str(p), reconcile_on="email", types={"points": "integer"}
    ).execute(ctx)
    print(lf, ctx["ti"].xcoms)
    inc = IncrementalQueryOperator(task_id="inc", where="id < 100").execute(context("inc"))
    inc2 = IncrementalQueryOperator(task_id="inc", where="id < 150").execute(context("inc", run_id="r2"))
    print(inc["count"], inc2["count"])
