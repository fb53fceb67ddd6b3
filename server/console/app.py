"""The console's web app (FastAPI, Jinja2): GET pages, HTML fragments the page polls, and the
same data as JSON. There is no route that writes, and none that reaches Flower's Control API."""

from __future__ import annotations

from importlib.resources import files
from typing import Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from starlette.middleware.trustedhost import TrustedHostMiddleware

from mmfl.errors import MmflError
from mmfl.server.console.charts import line_chart
from mmfl.server.console.security import LOOPBACK_NAMES, SecurityHeaders, TokenAuth
from mmfl.server.console.views import Overview, RunDetail

NO_DP = "no DP site in this run"
"""The ε plot's place on a run none of whose sites trains with differential privacy."""


class Source(Protocol):
    """Where the console reads from: a run store or a run folder."""

    label: str

    def overview(self) -> Overview: ...

    def run(self, run_id: str) -> RunDetail | None: ...


def run_charts(detail: RunDetail) -> dict[str, Markup]:
    """The run page's plots: retrieval, losses, bytes and privacy per round."""
    rounds = detail.rounds
    rsum = {
        f"{split} {pair}": [(r.round, getattr(r, split).get(pair)) for r in rounds]
        for pair in detail.pairs
        for split in ("test", "val")
    }
    losses = {
        "train": [(r.round, r.train_loss) for r in rounds],
        "distill": [(r.round, r.distill_loss) for r in rounds],
    }
    traffic = {
        "down MB": [(r.round, r.bytes_down / 1e6) for r in rounds],
        "up MB": [(r.round, r.bytes_up / 1e6) for r in rounds],
    }
    eps = {p.site_id: sorted(p.by_round.items()) for p in detail.privacy}
    budgets = {p.site_id: p.budget for p in detail.privacy if p.budget is not None}
    return {
        "rsum": line_chart(rsum, "retrieval R-sum per modality pair", "rsum", chart_id="chart-rsum"),
        "loss": line_chart(losses, "server losses", "loss", chart_id="chart-loss"),
        "bytes": line_chart(traffic, "bytes per round", "MB", chart_id="chart-bytes"),
        "epsilon": line_chart(
            eps,
            "ε spent per site (dashed: budget)",
            "ε",
            budgets,
            chart_id="chart-epsilon",
            empty=NO_DP if detail.dp_sites == [] else "no data yet",
        ),
    }


def create_app(
    source: Source,
    refresh_seconds: float = 2.0,
    token: bytes | None = None,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The console app over ``source``; with ``token`` every request needs it (see
    :class:`~mmfl.server.console.security.TokenAuth`); ``Host`` must be one of ``allowed_hosts``."""
    app = FastAPI(title="mmfl console", docs_url=None, redoc_url=None, openapi_url=None)
    root = files("mmfl.server.console")
    templates = Jinja2Templates(directory=str(root / "templates"))
    app.mount("/static", StaticFiles(directory=str(root / "static")), name="static")
    interval_ms = int(refresh_seconds * 1000)

    def page(request: Request, name: str, **context: object) -> HTMLResponse:
        return templates.TemplateResponse(
            request, name, {"source": source.label, "interval_ms": interval_ms, "live": "live", **context}
        )

    def detail_of(run_id: str) -> RunDetail:
        detail = source.run(run_id)
        if detail is None:
            raise HTTPException(404, f"no run {run_id}")
        return detail

    @app.exception_handler(MmflError)
    async def unreadable(request: Request, exc: MmflError) -> Response:  # noqa: ARG001
        return Response(f"the console cannot read its source: {exc}\n", 503, media_type="text/plain")

    @app.get("/", response_class=HTMLResponse)
    def overview_page(request: Request) -> HTMLResponse:
        view = source.overview()
        return page(request, "overview.html", view=view, live=view.live)

    @app.get("/partials/overview", response_class=HTMLResponse)
    def overview_partial(request: Request) -> HTMLResponse:
        view = source.overview()
        return page(request, "_overview.html", view=view, live=view.live)

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str) -> HTMLResponse:
        detail = detail_of(run_id)
        return page(request, "run.html", detail=detail, charts=run_charts(detail), live=detail.live)

    @app.get("/partials/runs/{run_id}", response_class=HTMLResponse)
    def run_partial(request: Request, run_id: str) -> HTMLResponse:
        detail = detail_of(run_id)
        return page(request, "_run.html", detail=detail, charts=run_charts(detail), live=detail.live)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/api/overview")
    def overview_json() -> JSONResponse:
        return JSONResponse(source.overview().model_dump(mode="json"))

    @app.get("/api/runs/{run_id}")
    def run_json(run_id: str) -> JSONResponse:
        return JSONResponse(detail_of(run_id).model_dump(mode="json"))

    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or list(LOOPBACK_NAMES))
    if token is not None:
        app.add_middleware(TokenAuth, token=token)
    app.add_middleware(SecurityHeaders)
    return app
