"""Wiring: store + ingest + live hub + API + dashboard in one ASGI app."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from listener import api
from listener.config import ListenerConfig
from listener.ingest import Ingest
from listener.live import LiveHub
from listener.metrics import Metrics
from listener.state import State
from listener.store import AmbiguousAlert, Store, fresh_alert, one_line

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


def build_state(cfg: ListenerConfig, token: str, *, wait_for_database: bool = False) -> State:
    """A migrated store, metrics, live hub and (not yet started) ingest; with
    `wait_for_database`, a database that cannot be reached yet is waited for."""
    if not token:
        raise ValueError("an API token is required")
    store = Store(cfg.database.url)
    store.migrate(wait=wait_for_database)
    metrics = Metrics()
    hub = LiveHub(metrics)

    def on_stored(alerts: list[dict[str, Any]], received: datetime) -> None:
        for alert in alerts:
            if not hub.seen(f"{alert['device_id']}/{alert['id']}"):
                hub.publish("alert", fresh_alert(alert, received))

    def on_peer_ack(device: str, alert_id: str) -> None:  # another instance stored it
        if hub.has_subscribers() and not hub.seen(f"{device}/{alert_id}"):
            stored = store.get_alert(alert_id, device)
            if stored is not None:
                hub.publish("alert", stored)

    def on_device(device_id: str) -> None:  # the changed device itself: no aggregate query
        if hub.has_subscribers():
            try:
                device = store.get_device(device_id)
            except SQLAlchemyError as exc:  # the page shows the older state; nothing is lost
                log.debug("cannot announce device %s: %s", device_id, one_line(exc))
                return
            if device is not None:
                hub.publish("devices", device)

    def on_peer_update(device: str, alert_id: str) -> None:  # changed on another instance
        if hub.has_subscribers():
            stored = store.get_alert(alert_id, device)
            if stored is not None:
                hub.publish("update", stored)

    ingest = Ingest(
        cfg,
        store,
        metrics,
        on_stored=on_stored,
        on_peer_ack=on_peer_ack,
        on_device=on_device,
        on_peer_update=on_peer_update,
    )
    return State(cfg, store, metrics, hub, ingest, token)


def tile_source(template: str) -> str:
    """The Content-Security-Policy source that lets the map load tiles from `template`."""
    parts = urlsplit(template)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return ""  # empty or relative: the tiles come from this listener ('self')
    host = re.sub(r"\{[^}]*\}", "*", parts.netloc.rpartition("@")[2])
    if re.fullmatch(r"(\*\.)?[A-Za-z0-9.-]+(:[0-9]+)?", host):
        return f"{scheme}://{host}"
    return f"{scheme}:"  # e.g. a placeholder inside a label: any host of that scheme


def security_headers(tile_url: str) -> list[tuple[bytes, bytes]]:
    """What every response carries: no script but the listener's own, no framing."""
    images = " ".join(filter(None, ("'self' data: blob:", tile_source(tile_url))))
    policy = (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src {images}; media-src 'self' blob:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    return [
        (b"content-security-policy", policy.encode()),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]


class SecurityHeaders:
    """ASGI middleware adding `security_headers` (pure ASGI: the live stream stays a stream)."""

    def __init__(self, app: ASGIApp, tile_url: str) -> None:
        self.app = app
        self.headers = security_headers(tile_url)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(state: State, *, start_ingest: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.hub.bind(asyncio.get_running_loop())
        if start_ingest:
            state.ingest.start()
        try:
            yield
        finally:
            state.hub.close()
            if start_ingest:
                await asyncio.to_thread(state.ingest.stop)
            state.store.close()

    app = FastAPI(
        title="Safeguard listener",
        version="1",
        description="Stores safeguard.alert/1 messages, acknowledges them, serves them.",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.listener = state

    async def ambiguous(_request: Request, exc: Exception) -> JSONResponse:
        devices = exc.devices if isinstance(exc, AmbiguousAlert) else []
        return JSONResponse({"detail": f"{exc}: add ?device=", "devices": devices}, 409)

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning(
            "%s %s: database unavailable: %s", request.method, request.url.path, one_line(exc)
        )
        return JSONResponse({"detail": "database unavailable"}, 503, {"Retry-After": "5"})

    app.add_exception_handler(AmbiguousAlert, ambiguous)
    app.add_exception_handler(SQLAlchemyError, unavailable)
    app.add_exception_handler(api.DatabaseUnavailable, unavailable)
    app.include_router(api.public)
    app.include_router(api.router)
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="dashboard")
    app.add_middleware(SecurityHeaders, tile_url=state.cfg.http.tile_url)
    return app
