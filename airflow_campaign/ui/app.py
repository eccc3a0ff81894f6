"""The campaign pages: a FastAPI app the plugin mounts at ``/campaign`` in the Airflow api-server.

Every page but the public ones (``/campaign/public/...``, see :mod:`airflow_campaign.ui.public`)
needs an authenticated Airflow user (the UI's session cookie or a bearer token: 401 without) and
shows only what belongs to the DAGs the user may read; a page about one DAG the user may not
read is 403. Addresses and numbers are masked unless the user may edit the DAG concerned (the
quarantine: unless the user may edit every DAG), and only such a user may release a quarantined
address. The campaign database is the Airflow connection ``[campaign] ui_conn_id`` (default
``campaign_default``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
from collections.abc import Iterator
from importlib import resources
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import psycopg
from airflow.api_fastapi.core_api.security import get_user
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2.sandbox import SandboxedEnvironment

from airflow_campaign.ui import data, public

STATIC = {  # name: (path under static/, media type)
    "uPlot.iife.min.js": ("uplot/uPlot.iife.min.js", "application/javascript"),
    "uPlot.min.css": ("uplot/uPlot.min.css", "text/css"),
    "LICENSE": ("uplot/LICENSE", "text/plain"),
    "campaign.js": ("campaign.js", "application/javascript"),
    "campaign.css": ("campaign.css", "text/css"),
}


# ---- who is asking ----------------------------------------------------------------------------------


User = Annotated[Any, Depends(get_user)]


def _manager() -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


def readable_dags(user: Any) -> set[str]:
    return set(_manager().get_authorized_dag_ids(user=user, method="GET"))


def _may(user: Any, dag_id: str | None, method: str) -> bool:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    if not dag_id:
        return False
    return bool(_manager().is_authorized_dag(method=method, user=user, details=DagDetails(id=dag_id)))


def schedules(dag_ids: set[str]) -> dict[str, str]:
    """Each DAG's schedule as Airflow summarises it (``@daily``, ``0 9 * * *``, ``None``), read
    from Airflow's own metadata database; empty when it cannot be read."""
    if not dag_ids:
        return {}
    try:
        from airflow.models.dag import DagModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            rows = session.execute(
                select(DagModel.dag_id, DagModel.timetable_summary).where(
                    DagModel.dag_id.in_(sorted(dag_ids))
                )
            ).all()
        return {str(dag_id): str(summary or "") for dag_id, summary in rows}
    except Exception:  # the page still shows everything else
        return {}


def may_edit_everything(user: Any) -> bool:
    return bool(_manager().is_authorized_dag(method="PUT", user=user))


def _require_read(user: Any, dag_id: str | None) -> None:
    if not _may(user, dag_id, "GET"):
        raise HTTPException(status_code=403, detail="You may not read this DAG.")


def mask(address: str | None) -> str:
    """``j***@example.com``, ``+33******78``, ``…c0ffee`` (an endpoint or token)."""
    if not address:
        return ""
    local, at, domain = address.partition("@")
    if at:
        return f"{local[:1]}***@{domain}"
    if address.startswith("+"):
        return address[:3] + "*" * max(len(address) - 5, 0) + address[-2:]
    return "…" + address[-6:]


# ---- the campaign database ------------------------------------------------------------------------


def conn_id() -> str:
    from airflow.configuration import conf

    return conf.get("campaign", "ui_conn_id", fallback="campaign_default") or "campaign_default"


@contextlib.contextmanager
def _connect() -> Iterator[psycopg.Connection]:
    from airflow_campaign.hooks.campaign import CampaignHook

    conn = CampaignHook(conn_id()).connect()
    try:
        conn.execute("SET statement_timeout = '15s'")
        yield conn
        conn.commit()
    finally:
        conn.close()


def get_conn() -> Iterator[psycopg.Connection]:
    with _connect() as conn:
        yield conn


Conn = Annotated[psycopg.Connection, Depends(get_conn)]


# ---- pages ------------------------------------------------------------------------------------------

_env = SandboxedEnvironment(autoescape=True)
_env.filters["tojson"] = lambda v: json.dumps(v, default=str).replace("<", "\\u003c")
_env.filters["when"] = lambda v: v.strftime("%Y-%m-%d %H:%M") if isinstance(v, dt.datetime) else (v or "")
_env.filters["n"] = lambda v: f"{int(v or 0):,}"


@functools.cache
def _template(name: str) -> Any:
    """A page's template, read and compiled once per process."""
    text = resources.files("airflow_campaign.ui").joinpath("templates", name).read_text(encoding="utf-8")
    return _env.from_string(text)


def page(name: str, **values: Any) -> HTMLResponse:
    base = _template("base.html")
    body = _template(name).render(**values)
    return HTMLResponse(base.render(body=body, title=values.get("title", "Campaigns")))


def _json(body: Any) -> JSONResponse:
    return JSONResponse(json.loads(json.dumps(body, default=str)))


def _listed(conn: psycopg.Connection, user: Any, page_: int) -> list[dict[str, Any]]:
    """A page of the deliveries the user may read, each with its DAG's schedule."""
    rows = data.deliveries(conn, readable_dags(user), page_)
    summaries = schedules({r["dag_id"] for r in rows if r["dag_id"]})
    for row in rows:
        summary = summaries.get(row["dag_id"], "")
        row["schedule"] = "none (triggered)" if summary == "None" else summary  # schedule=None
    return rows


def _errors(
    conn: psycopg.Connection, user: Any, found: dict[str, Any], occurrence_ids: list[int]
) -> list[dict[str, Any]]:
    """The recent errors of these occurrences, their addresses masked unless the user may edit the DAG."""
    errors = data.recent_errors(conn, occurrence_ids)
    if not _may(user, found["dag_id"], "PUT"):
        for e in errors:
            e["address"] = mask(e["address"])
    return errors


def create_app() -> FastAPI:
    app = FastAPI(title="Campaigns", docs_url=None, redoc_url=None, openapi_url=None)
    from airflow.configuration import conf

    rate = conf.getint("campaign", "public_rate_limit", fallback=public.RATE)
    limiter, mirror_limiter = public.RateLimiter(rate), public.RateLimiter(rate)  # one budget per page

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(status_code=404)
        relative, media_type = STATIC[name]
        path = resources.files("airflow_campaign.ui").joinpath("static", *relative.split("/"))
        return Response(path.read_bytes(), media_type=media_type, headers={"Cache-Control": "max-age=3600"})

    @app.get("/", response_class=HTMLResponse)
    def home(user: User) -> Response:
        return RedirectResponse("deliveries", status_code=307)

    # -- deliveries

    @app.get("/api/deliveries")
    def api_deliveries(user: User, conn: Conn, page_: Annotated[int, Query(alias="page", ge=0)] = 0) -> Any:
        return _json(_listed(conn, user, page_)[: data.PAGE])

    @app.get("/deliveries", response_class=HTMLResponse)
    def deliveries(user: User, conn: Conn, page_: Annotated[int, Query(alias="page", ge=0)] = 0) -> Response:
        rows = _listed(conn, user, page_)
        sparklines = data.trends(conn, [row["id"] for row in rows[: data.PAGE]])
        for row in rows:
            row["trend"] = sparklines.get(row["id"], [])
        return page(
            "deliveries.html",
            title="Deliveries",
            rows=rows[: data.PAGE],
            page=page_,
            more=len(rows) > data.PAGE,
        )

    def _delivery(conn: psycopg.Connection, user: Any, delivery_id: int) -> dict[str, Any]:
        found = data.delivery(conn, delivery_id)
        if found is None:
            raise HTTPException(status_code=404, detail="No such delivery.")
        _require_read(user, found["dag_id"])
        return found

    @app.get("/api/deliveries/{delivery_id}")
    def api_delivery(user: User, conn: Conn, delivery_id: int) -> Any:
        found = _delivery(conn, user, delivery_id)
        occ = data.occurrences(conn, delivery_id, 0)[: data.PAGE]
        errors = _errors(conn, user, found, [o["id"] for o in occ])
        return _json(
            {**found, "occurrences": occ, "errors": errors, "periods": data.by_period(conn, delivery_id)}
        )

    @app.get("/deliveries/{delivery_id}", response_class=HTMLResponse)
    def delivery(
        user: User,
        conn: Conn,
        delivery_id: int,
        page_: Annotated[int, Query(alias="page", ge=0)] = 0,
        occurrence: int | None = None,
    ) -> Response:
        found = _delivery(conn, user, delivery_id)
        occ = data.occurrences(conn, delivery_id, page_)
        chosen = next((o for o in occ if o["id"] == occurrence), occ[0] if occ else None)
        errors = _errors(conn, user, found, [chosen["id"]] if chosen else [])
        return page(
            "delivery.html",
            title=found["name"],
            d=found,
            chosen=chosen,
            occurrences=occ[: data.PAGE],
            page=page_,
            more=len(occ) > data.PAGE,
            errors=errors,
            periods=data.by_period(conn, delivery_id),
        )

    @app.get("/report")
    def report(
        user: User, conn: Conn, dag_id: str, task_id: str, run_id: str | None = None, map_index: str = "-1"
    ) -> Response:
        """Where a task instance's "Delivery report" and the operator's extra link land. The Airflow
        UI leaves ``{MAP_INDEX}`` as it is for a task that is not mapped: any non-number is -1."""
        _require_read(user, dag_id)
        index = int(map_index) if map_index.isascii() and map_index.isdigit() and len(map_index) < 10 else -1
        found = data.delivery_by_task(conn, dag_id, task_id)
        if not found:
            raise HTTPException(
                status_code=404, detail=f"Task {task_id} of {dag_id} has sent no delivery yet."
            )
        chosen = found[0]
        for d in found:  # a mapped delivery is named <dag>.<task>[<map index>]
            if index >= 0 and d["name"].endswith(f"[{index}]"):
                chosen = d
        query: dict[str, Any] = {}
        if run_id:
            occurrence = data.occurrence_of_run(conn, chosen["id"], run_id)
            if occurrence is not None:
                query["occurrence"] = occurrence
        target = f"deliveries/{chosen['id']}" + (f"?{urlencode(query)}" if query else "")
        return RedirectResponse(target, status_code=307)

    @app.get("/run", response_class=HTMLResponse)
    def run(user: User, conn: Conn, dag_id: str, run_id: str) -> Response:
        _require_read(user, dag_id)
        return page(
            "run.html",
            title=f"{dag_id} {run_id}",
            dag_id=dag_id,
            run_id=run_id,
            rows=data.run_deliveries(conn, dag_id, run_id),
        )

    # -- audiences and services

    @app.get("/audiences", response_class=HTMLResponse)
    def audiences(user: User, conn: Conn, page_: Annotated[int, Query(alias="page", ge=0)] = 0) -> Response:
        rows = data.audiences(conn, readable_dags(user), page_)
        return page(
            "audiences.html",
            title="Audiences",
            rows=rows[: data.PAGE],
            page=page_,
            more=len(rows) > data.PAGE,
        )

    @app.get("/services", response_class=HTMLResponse)
    def services(user: User, conn: Conn, page_: Annotated[int, Query(alias="page", ge=0)] = 0) -> Response:
        rows = data.services(conn, page_)
        return page(
            "services.html", title="Services", rows=rows[: data.PAGE], page=page_, more=len(rows) > data.PAGE
        )

    @app.get("/services/{service_id}/events", response_class=HTMLResponse)
    def service_events(user: User, conn: Conn, service_id: int, before: int | None = None) -> Response:
        rows = data.service_events(conn, service_id, before)
        return page(
            "events.html",
            title="Subscription events",
            rows=rows[: data.PAGE],
            service_id=service_id,
            next_before=rows[data.PAGE - 1]["id"] if len(rows) > data.PAGE else None,
        )

    # -- quarantine

    @app.get("/quarantine", response_class=HTMLResponse)
    def quarantine(
        user: User,
        conn: Conn,
        channel: str | None = None,
        after_channel: str | None = None,
        after_address: str | None = None,
    ) -> Response:
        if channel is not None and channel not in ("email", "sms", "push"):
            raise HTTPException(status_code=400, detail="channel: email, sms or push.")
        after = (after_channel, after_address) if after_channel and after_address is not None else None
        rows, counts = data.quarantine(conn, channel, after)
        editor = may_edit_everything(user)
        shown = rows[: data.PAGE]
        for r in shown:
            r["shown"] = r["address"] if editor else mask(r["address"])
        last = shown[-1] if len(rows) > data.PAGE else None
        return page(
            "quarantine.html",
            title="Quarantine",
            rows=shown,
            counts=counts,
            channel=channel,
            editor=editor,
            next_query=urlencode(
                {
                    k: v
                    for k, v in {
                        "channel": channel,
                        "after_channel": last["channel"],
                        "after_address": last["address"],
                    }.items()
                    if v
                }
            )
            if last
            else None,
        )

    @app.post("/quarantine/release")
    def release(
        request: Request,
        user: User,
        conn: Conn,
        channel: Annotated[str, Form()],
        address: Annotated[str, Form()],
    ) -> Response:
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc != request.url.netloc:
            raise HTTPException(status_code=403, detail="A release is posted from the Campaigns page only.")
        if not may_edit_everything(user):
            raise HTTPException(status_code=403, detail="Releasing an address needs edit access to the DAGs.")
        gone = conn.execute(
            "DELETE FROM campaign.quarantine WHERE channel = %s AND address = %s RETURNING reason",
            (channel, address),
        ).fetchone()
        if gone is None:
            raise HTTPException(status_code=404, detail="This address is not quarantined.")
        conn.execute(
            "INSERT INTO campaign.ui_events (kind, origin, actor, channel, address, applied)"
            " VALUES ('quarantine_release', 'campaigns ui', %s, %s, %s, %s)",
            (str(user.get_name()), channel, address, f"released ({gone[0]})"),
        )
        conn.commit()  # before the answer: the page it redirects to must not show the address
        return RedirectResponse(f"../quarantine?channel={channel}", status_code=303)

    # -- public: the unsubscribe link

    def _keys() -> Any:
        from airflow_campaign.delivery.unsubscribe import load_keys

        try:
            return load_keys()
        except Exception as exc:  # no key configured: every link is refused (and the log says why)
            import logging

            logging.getLogger(__name__).warning("campaign unsubscribe links cannot be checked: %s", exc)
            return None

    @app.api_route("/public/unsubscribe", methods=["GET", "POST"])
    async def unsubscribe(request: Request) -> Response:
        client = public.client_of(request)
        if not limiter.allow(client):
            return HTMLResponse("Too many requests.", status_code=429, headers={"Retry-After": "60"})
        query = request.url.query
        link = public.check(query, _keys())
        if not link.valid:
            return HTMLResponse(public.INVALID_PAGE, status_code=400)
        if request.method == "GET":
            with _connect() as conn:
                label = public.service_label(conn, link.service)
            return HTMLResponse(public.CONFIRM_PAGE.replace("{what}", public.confirm_text(link, label)))
        form = (await request.body())[:1000].decode("utf-8", "replace")
        origin = "one-click" if "List-Unsubscribe=One-Click" in form else "confirm page"
        with _connect() as conn:
            public.unsubscribe(conn, link, origin, client)
        if origin == "one-click":
            return Response(status_code=200)
        return HTMLResponse(public.DONE_PAGE)

    # -- public: the mirror page

    @app.get("/public/mirror")
    def mirror(request: Request) -> Response:
        if not mirror_limiter.allow(public.client_of(request)):
            return HTMLResponse("Too many requests.", status_code=429, headers={"Retry-After": "60"})
        query = request.url.query
        keys = _keys()
        link = public.check(query, keys, "mirror")
        if link.reason == "expired":
            return HTMLResponse(public.GONE_PAGE, status_code=410, headers=public.MIRROR_HEADERS)
        if not link.valid or keys is None:
            return HTMLResponse(public.INVALID_PAGE, status_code=400, headers=public.MIRROR_HEADERS)
        with _connect() as conn:
            html = public.mirror(conn, link, keys, query)
        if html is None:
            return HTMLResponse(public.GONE_PAGE, status_code=410, headers=public.MIRROR_HEADERS)
        return HTMLResponse(html, headers=public.MIRROR_HEADERS)

    return app
