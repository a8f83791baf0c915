"""The HTTP API: alerts, acknowledgement, devices, clips, live stream, health and metrics."""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, TypeVar

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError

from listener.state import State
from listener.store import NOTES_MAX_CHARS, AlertFilter, NotesFull, one_line

log = logging.getLogger(__name__)
T = TypeVar("T")

DB_WAIT_S = 10.0  # an API call that needs the database answers 503 after this long
HEALTH_WAIT_S = 2.0  # /healthz says database: false after this long
DB_THREADS = 8  # threads the API may hold in the database; a frozen server holds them all


class DatabaseUnavailable(Exception):
    """The database did not answer in time."""


async def db(state: State, fn: Callable[..., T], *args: Any, wait: float = DB_WAIT_S) -> T:
    """`fn(*args)` in a worker thread of the API's own database pool, or DatabaseUnavailable
    after `wait` s. The server's other threads (static files, metrics) stay free whatever the
    database does; a call that never returns keeps only its own thread."""
    if state.db_limiter is None:
        state.db_limiter = anyio.CapacityLimiter(DB_THREADS)
    try:
        with anyio.fail_after(wait):
            return await anyio.to_thread.run_sync(
                fn, *args, limiter=state.db_limiter, abandon_on_cancel=True
            )
    except TimeoutError:
        raise DatabaseUnavailable(f"the database did not answer within {wait:g} s") from None


NO_NUL = r"^[^\x00]*$"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
CLIP_TYPES = ("audio/wav", "audio/x-wav", "audio/flac", "audio/mpeg", "video/mp4", "video/webm")

Severity = Literal["info", "warning", "critical"]
Status = Literal["new", "acknowledged", "resolved"]
AlertId = Annotated[
    str,
    Path(
        min_length=1, max_length=64, pattern=NO_NUL, description="The message's `id` (may hold /)"
    ),
]
Text64 = Annotated[str | None, Query(min_length=1, max_length=64, pattern=NO_NUL)]
DeviceOf = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=64,
        pattern=NO_NUL,
        description="The alert's device_id: needed only when several devices used this id",
    ),
]


class Handling(BaseModel):
    """What the listener knows about an alert beyond its message."""

    status: Status
    received_at: str
    acknowledged_by: str | None
    acknowledged_at: str | None
    resolved_by: str | None
    resolved_at: str | None
    note: str | None
    has_clip: bool
    lat: float | None
    lon: float | None


class AlertOut(BaseModel):
    """A stored `safeguard.alert/1` message (all its fields) plus `listener`."""

    model_config = ConfigDict(extra="allow")
    schema_: str = Field(alias="schema")
    id: str
    device_id: str
    event: str
    category: str
    severity: str
    score: int | float  # as the producer sent it (1 stays 1)
    started_at: str
    sent_at: str
    listener: Handling


class Mark(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, max_length=128, pattern=NO_NUL, description="Who")
    note: str | None = Field(None, max_length=2000, pattern=NO_NUL, description="A remark")


class DeviceOut(BaseModel):
    device_id: str
    status: str | None
    status_at: str | None
    health: dict[str, Any] | None
    health_at: str | None
    last_alert_at: str | None
    alerts: int


class Summary(BaseModel):
    new_alerts: int
    new_events: int
    new_critical_events: int


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    mqtt: bool
    database: bool


class DashboardConfig(BaseModel):
    tile_url: str
    tile_attribution: str


_bearer = HTTPBearer(auto_error=False, description="SAFEGUARD_API_TOKEN")


def state_of(request: Request) -> State:
    state: State = request.app.state.listener
    return state


def authorize(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    token = state_of(request).token
    given = creds.credentials if creds is not None else ""
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


StateDep = Annotated[State, Depends(state_of)]
public = APIRouter()
router = APIRouter(dependencies=[Depends(authorize)], responses={401: {"description": "No token"}})
_404: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such alert"},
    409: {"description": "Several devices used this id: add ?device="},
}
_MARK: dict[int | str, dict[str, Any]] = {
    **_404,
    413: {"description": f"The alert's notes would exceed {NOTES_MAX_CHARS} characters"},
}


@public.get("/healthz", response_model=Health, tags=["ops"])
async def healthz(state: StateDep) -> Health:
    """Liveness and readiness, without a token: the database must answer (within 2 s) and
    accept writes."""
    mqtt_ok = state.ingest.connected.is_set()
    try:
        await db(state, state.store.check_writable, wait=HEALTH_WAIT_S)
        db_ok, why = True, ""
    except (SQLAlchemyError, DatabaseUnavailable) as exc:  # reported: it says what is wrong
        db_ok, why = False, one_line(exc)
    if db_ok != state.db_ok:  # said when it changes, not on every probe
        if db_ok:
            log.info("database check passes again")
        else:
            log.warning("database check failed: %s", why)
        state.db_ok = db_ok
    return Health(status="ok" if mqtt_ok and db_ok else "degraded", mqtt=mqtt_ok, database=db_ok)


@router.get("/metrics", tags=["ops"], response_class=Response)
def metrics(state: StateDep) -> Response:
    """Prometheus exposition."""
    return Response(state.metrics.exposition(), media_type="text/plain; version=0.0.4")


@router.get(
    "/api/alerts",
    response_model=list[AlertOut],
    responses={400: {"description": "since without a time zone, before_id without before"}},
    tags=["alerts"],
)
async def list_alerts(
    state: StateDep,
    request: Request,
    *,
    device: Text64 = None,
    category: Text64 = None,
    severity: Severity | None = None,
    status: Status | None = None,
    since: Annotated[
        datetime | None,
        Query(description="received at or after (RFC 3339; a date alone is its midnight UTC)"),
    ] = None,
    event_id: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            pattern=NO_NUL,
            description="only the messages of this event: its start and those with this event_id",
        ),
    ] = None,
    before: Annotated[
        datetime | None,
        Query(description="paging: older than the message received at this time (RFC 3339)"),
    ] = None,
    before_id: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            pattern=NO_NUL,
            description="paging: with before, the id of that message (the next page's cursor is "
            "the last message's listener.received_at and id)",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> list[dict[str, Any]]:
    """Alerts, newest first (by time received, then id)."""
    raw_since = request.query_params.get("since", "")
    if since is not None and re.fullmatch(r"[-+]?[0-9.]+", raw_since):  # pydantic: Unix time
        raise HTTPException(400, "since is an RFC 3339 time or a date, not a number")
    if since is not None and since.tzinfo is None:
        if not _DATE.fullmatch(raw_since):
            raise HTTPException(400, "since needs a time zone (e.g. Z)")
        since = since.replace(tzinfo=timezone.utc)  # a date: its midnight UTC
    if before is not None and before.tzinfo is None:
        raise HTTPException(400, "before needs a time zone (e.g. Z)")
    if before_id is not None and before is None:
        raise HTTPException(400, "before_id needs before")
    cursor = None if before is None else (before, before_id or "")  # no id: all of that time
    where = AlertFilter(device, category, severity, status, since, event_id, cursor)
    return await db(state, state.store.list_alerts, where, limit, offset)


@router.get("/api/summary", response_model=Summary, tags=["alerts"])
async def summary(state: StateDep) -> dict[str, int]:
    """What still needs a person: unacknowledged messages, and unacknowledged events (a
    start, its updates and end count once), of which critical."""
    return await db(state, state.store.summary)


@router.get("/api/devices", response_model=list[DeviceOut], tags=["devices"])
async def list_devices(state: StateDep) -> list[dict[str, Any]]:
    """Every device seen, with its last status and health."""
    return await db(state, state.store.list_devices)


_CLIP_BODY = {
    "requestBody": {
        "required": True,
        "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in CLIP_TYPES},
    }
}


@router.put(
    "/api/alerts/{alert_id:path}/clip",
    status_code=204,
    response_class=Response,
    openapi_extra=_CLIP_BODY,
    responses={
        **_404,
        400: {"description": "Empty"},
        413: {"description": "Too large"},
        415: {"description": "Bad type"},
    },
    tags=["clips"],
)
async def upload_clip(
    state: StateDep, alert_id: AlertId, request: Request, device: DeviceOf = None
) -> Response:
    """Upload (or replace) the evidence clip of an alert."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in CLIP_TYPES:
        raise HTTPException(415, f"content type must be one of {', '.join(CLIP_TYPES)}")
    limit = state.cfg.http.max_clip_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"clip larger than {limit} bytes")
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > limit:
            raise HTTPException(413, f"clip larger than {limit} bytes")
    if not data:
        raise HTTPException(400, "empty clip")
    key = await db(state, state.store.put_clip, alert_id, device, content_type, bytes(data))
    if key is None:
        raise HTTPException(404, "no such alert")
    alert = await db(state, state.store.get_alert, alert_id, key[0])
    if alert is not None:
        state.hub.publish("update", alert)
    state.ingest.relay_update(key[0], alert_id)  # the dashboards on the other instances
    return Response(status_code=204)


@router.get(
    "/api/alerts/{alert_id:path}/clip",
    response_class=Response,
    responses={**_404, 200: {"content": {t: {} for t in CLIP_TYPES}}},
    tags=["clips"],
)
async def download_clip(state: StateDep, alert_id: AlertId, device: DeviceOf = None) -> Response:
    clip = await db(state, state.store.get_clip, alert_id, device)
    if clip is None:
        raise HTTPException(404, "no clip for this alert")
    return Response(clip[1], media_type=clip[0])


@router.get("/api/alerts/{alert_id:path}", response_model=AlertOut, responses=_404, tags=["alerts"])
async def get_alert(state: StateDep, alert_id: AlertId, device: DeviceOf = None) -> dict[str, Any]:
    """One alert."""
    alert = await db(state, state.store.get_alert, alert_id, device)
    if alert is None:
        raise HTTPException(404, "no such alert")
    return alert


async def _mark(
    state: State, alert_id: str, device: str | None, action: str, body: Mark
) -> dict[str, Any]:
    try:
        changed = await db(state, state.store.mark, alert_id, device, action, body.by, body.note)
    except NotesFull as exc:
        raise HTTPException(413, str(exc)) from None
    if not changed:
        raise HTTPException(404, "no such alert")
    for alert in changed:  # the alert and the other messages of its event
        state.hub.publish("update", alert)
        state.ingest.relay_update(alert["device_id"], alert["id"])  # and to the other instances
    return changed[0]


@router.post(
    "/api/alerts/{alert_id:path}/ack", response_model=AlertOut, responses=_MARK, tags=["alerts"]
)
async def acknowledge(
    state: StateDep, alert_id: AlertId, body: Mark, device: DeviceOf = None
) -> dict[str, Any]:
    """A person saw the alert (the first acknowledgement is kept)."""
    return await _mark(state, alert_id, device, "ack", body)


@router.post(
    "/api/alerts/{alert_id:path}/resolve", response_model=AlertOut, responses=_MARK, tags=["alerts"]
)
async def resolve(
    state: StateDep, alert_id: AlertId, body: Mark, device: DeviceOf = None
) -> dict[str, Any]:
    """The situation is dealt with."""
    return await _mark(state, alert_id, device, "resolve", body)


@router.get("/api/live", tags=["alerts"], response_class=StreamingResponse)
def live(state: StateDep) -> StreamingResponse:
    """Server-sent events: `alert` (newly stored) and `update` (acknowledged, resolved, clip)."""
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(state.hub.stream(), media_type="text/event-stream", headers=headers)


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request) -> JSONResponse:
    """The OpenAPI schema (behind the token like everything else)."""
    return JSONResponse(request.app.openapi())


@router.get("/api/config", response_model=DashboardConfig, tags=["dashboard"])
def dashboard_config(state: StateDep) -> DashboardConfig:
    return DashboardConfig(
        tile_url=state.cfg.http.tile_url, tile_attribution=state.cfg.http.tile_attribution
    )
