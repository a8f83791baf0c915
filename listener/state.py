"""Everything one listener instance holds, shared by the API handlers."""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from listener.config import ListenerConfig
from listener.ingest import Ingest
from listener.live import LiveHub
from listener.metrics import Metrics
from listener.store import Store


@dataclass
class State:
    cfg: ListenerConfig
    store: Store
    metrics: Metrics
    hub: LiveHub
    ingest: Ingest
    token: str
    db_limiter: anyio.CapacityLimiter | None = None  # the API's database threads (api.db)
    db_ok: bool = True  # the last /healthz database check (its changes are logged)
