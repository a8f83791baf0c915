"""Everything one listener instance holds, shared by the API handlers."""

from __future__ import annotations

from dataclasses import dataclass

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
