"""Wiring: store + ingest + live hub + API + dashboard in one ASGI app."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from listener import api
from listener.config import ListenerConfig
from listener.ingest import Ingest
from listener.live import LiveHub
from listener.metrics import Metrics
from listener.state import State
from listener.store import Store, fresh_alert

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


def build_state(cfg: ListenerConfig, token: str) -> State:
    """A migrated store, metrics, live hub and (not yet started) ingest."""
    if not token:
        raise ValueError("an API token is required")
    store = Store(cfg.database.url)
    store.migrate()
    metrics = Metrics()
    hub = LiveHub(metrics)

    def on_stored(alerts: list[dict[str, Any]], received: datetime) -> None:
        for alert in alerts:
            if not hub.seen(alert["id"]):
                hub.publish("alert", fresh_alert(alert, received))

    def on_peer_ack(alert_id: str) -> None:  # another instance stored it
        if hub.has_subscribers() and not hub.seen(alert_id):
            stored = store.get_alert(alert_id)
            if stored is not None:
                hub.publish("alert", stored)

    def on_device(device_id: str) -> None:
        hub.publish("devices", {"device_id": device_id})

    ingest = Ingest(
        cfg, store, metrics, on_stored=on_stored, on_peer_ack=on_peer_ack, on_device=on_device
    )
    return State(cfg, store, metrics, hub, ingest, token)


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
    app.include_router(api.public)
    app.include_router(api.router)
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="dashboard")
    return app
