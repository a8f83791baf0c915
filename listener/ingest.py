"""Ingest: MQTT 5 shared subscription -> checks -> batched idempotent store -> ack.

The broker's PUBACK for an alert is sent only after the alert is stored (manual acks), and
the listener's own ack message `{"id": ..., "status": "stored"}` is published after the store
commits. Rejected messages are counted and acknowledged so that the broker does not resend them.

A packet id names a message only within one connection: after a reconnect the broker numbers
its messages afresh, so a PUBACK for a message of the old connection would acknowledge
another, not yet stored, message. Each message carries the connection (`session`) it came
on, and its PUBACK is dropped if that connection has ended (the broker sends the message again,
or the device resends it; storing is idempotent).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy.exc import SQLAlchemyError

from listener.checks import Rejected, check_alert, check_health, check_status, topic_device
from listener.config import ConfigError, ListenerConfig, read_secret
from listener.metrics import Metrics
from listener.store import Key, Store, is_transient, key_of, one_line, utcnow

log = logging.getLogger(__name__)
RECONNECT_MAX_S = 30  # longest wait between attempts to reach the broker, seconds
UPDATE = "ack/update"  # <prefix>/<device>/ack/update: an alert changed on another instance

StoredSink = Callable[[list[dict[str, Any]], datetime], None]


@dataclass(frozen=True)
class Pending:
    alert: dict[str, Any]
    mid: int
    qos: int
    session: int  # the connection the message came on (Ingest._session when it arrived)


class Ingest:
    """One MQTT client and one store worker thread."""

    def __init__(
        self,
        cfg: ListenerConfig,
        store: Store,
        metrics: Metrics,
        *,
        on_stored: StoredSink | None = None,
        on_peer_ack: Callable[[str, str], None] | None = None,
        on_device: Callable[[str], None] | None = None,
        on_peer_update: Callable[[str, str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.on_stored = on_stored
        self.on_peer_ack = on_peer_ack
        self.on_device = on_device
        self.on_peer_update = on_peer_update
        self.prefix = cfg.mqtt.prefix
        self._queue: queue.Queue[Pending] = queue.Queue(maxsize=4 * cfg.database.batch_size + 1000)
        # status, health and peer acks: handled off the network thread (a slow database must
        # not stop the MQTT keepalives); beyond this many waiting, they are dropped and counted
        self._device_queue: queue.Queue[tuple[str, bytes, bool]] = queue.Queue(maxsize=2000)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._device_worker: threading.Thread | None = None
        self.connected = threading.Event()
        client_id = cfg.mqtt.client_id or f"safeguard-listener-{socket.gethostname()}-{os.getpid()}"
        self._client_id = (
            client_id if cfg.mqtt.client_id else f"{client_id}-{random.getrandbits(24):06x}"[:64]
        )
        # PUBACKs are sent only for messages of the current connection: `_session` counts
        # connections, and changes under `_ack_lock` before paho can open the next one
        self._ack_lock = threading.Lock()
        self._session = 0
        self.stale_acks = 0  # PUBACKs dropped because their connection had ended
        self.client = self._make_client()
        self._unreachable_said = False  # once per streak of failed attempts, then DEBUG

    def _make_client(self) -> mqtt.Client:
        mq = self.cfg.mqtt
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.max_inflight_messages_set(200)
        client.reconnect_delay_set(1, RECONNECT_MAX_S)
        if mq.username:
            password = read_secret("SAFEGUARD_MQTT_PASSWORD", "mqtt_password") or None
            client.username_pw_set(mq.username, password)
        if mq.tls:
            try:
                client.tls_set(ca_certs=mq.ca_file or None)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: not a CA bundle
                raise ConfigError(f"mqtt.ca_file {mq.ca_file or '(system)'}: {exc}") from None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        return client

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._worker = threading.Thread(target=self._store_loop, name="listener-store", daemon=True)
        self._worker.start()
        self._device_worker = threading.Thread(
            target=self._device_loop, name="listener-devices", daemon=True
        )
        self._device_worker.start()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: untyped
        props.ReceiveMaximum = self.cfg.mqtt.receive_maximum
        self.client.connect_async(
            self.cfg.mqtt.host, self.cfg.mqtt.port, self.cfg.mqtt.keepalive, properties=props
        )
        self.client.loop_start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for worker in (self._worker, self._device_worker):
            if worker is not None:
                worker.join(timeout)
        self._worker = self._device_worker = None
        self._end_session()
        self.client.disconnect()
        self.client.loop_stop()
        self.client.reinitialise()  # closes paho's wake-up socket pair (else only its finaliser)
        self.client = self._make_client()  # ready should it be started again
        self.connected.clear()
        self.metrics.mqtt_connected.set(0)

    # --- MQTT callbacks (network thread) ------------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, _ud: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        p, group = self.prefix, self.cfg.mqtt.group
        topics = [
            (f"$share/{group}/{p}/+/alert", SubscribeOptions(qos=1)),
            (f"{p}/+/status", SubscribeOptions(qos=1)),
            (f"{p}/+/health", SubscribeOptions(qos=0)),
        ]
        if self.on_peer_ack is not None:
            topics.append((f"{p}/+/ack", SubscribeOptions(qos=0, noLocal=True)))
        if self.on_peer_update is not None:
            topics.append((f"{p}/+/{UPDATE}", SubscribeOptions(qos=1, noLocal=True)))
        client.subscribe(topics)
        log.info("connected to %s:%s, group %s", self.cfg.mqtt.host, self.cfg.mqtt.port, group)
        self._unreachable_said = False
        self.connected.set()
        self.metrics.mqtt_connected.set(1)

    def _on_disconnect(
        self, _c: mqtt.Client, _ud: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        # paho calls this on the network thread before it reconnects (which first empties its
        # queue of packets to send): an ack of this connection's messages is from now on dropped
        self._end_session()
        self.connected.clear()
        self.metrics.mqtt_connected.set(0)
        if not self._stop.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason)

    def _end_session(self) -> None:
        with self._ack_lock:
            self._session += 1

    def _ack(self, item: Pending) -> None:
        """The broker's PUBACK for a stored (or dropped) alert, if its connection still stands."""
        with self._ack_lock:  # not across a reconnect: `_end_session` waits for this
            if item.session == self._session:
                self.client.ack(item.mid, item.qos)
                return
            self.stale_acks += 1
        log.debug(
            "not acking packet %s of an ended connection (alert %s); it comes again",
            item.mid, item.alert["id"],
        )  # fmt: skip

    def _on_connect_fail(self, _c: mqtt.Client, _ud: Any) -> None:
        level = logging.DEBUG if self._unreachable_said else logging.WARNING
        self._unreachable_said = True
        log.log(
            level,
            "cannot reach the broker at %s:%s; retrying every 1-%d s",
            self.cfg.mqtt.host, self.cfg.mqtt.port, RECONNECT_MAX_S,
        )  # fmt: skip

    def _on_message(self, client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.handle(msg.topic, bytes(msg.payload), msg.mid, msg.qos, bool(msg.retain))
        except Exception:  # a bug must not kill the network thread
            log.exception("unexpected error handling a message on %s", msg.topic[:200])
            self.metrics.count("failed")
            client.ack(msg.mid, msg.qos)

    def handle(self, topic: str, payload: bytes, mid: int, qos: int, retain: bool = False) -> None:
        """Route one message; alerts go to the store queue, everything else is acked here."""
        if topic.endswith("/alert"):
            try:
                alert = check_alert(topic, payload, self.prefix, self.cfg.mqtt.max_message_bytes)
            except Rejected as exc:
                self.metrics.count(exc.reason)
                log.warning("rejected a message on %s: %s", topic[:200], exc)
                self.client.ack(mid, qos)
                return
            # handle() runs on the network thread, where `_session` changes: no race here
            self._enqueue(Pending(alert, mid, qos, self._session))
            return
        try:
            self._device_queue.put_nowait((topic, payload, retain))
        except queue.Full:
            kind = topic.rpartition("/")[2][:16]
            self.metrics.device_messages.labels(kind=kind, outcome="dropped").inc()
        finally:
            self.client.ack(mid, qos)

    def _device_loop(self) -> None:
        while not self._stop.is_set():
            try:
                topic, payload, retain = self._device_queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._device_message(topic, payload, retain)
            except Exception:  # a bug must not end the thread
                log.exception("unexpected error handling a message on %s", topic[:200])

    def relay_update(self, device: str, alert_id: str) -> None:
        """Tell the other instances that an alert changed here (acknowledged, resolved, a
        clip), so that their live streams carry it too. Devices do not subscribe to it."""
        payload = json.dumps({"id": alert_id})
        self.client.publish(f"{self.prefix}/{device}/{UPDATE}", payload, qos=1)

    def _peer_update(self, topic: str, payload: bytes) -> None:
        device = topic_device(topic, self.prefix, UPDATE)
        if self.on_peer_update is None or device is None or len(payload) > 1024:
            return
        try:
            update = json.loads(payload)
        except ValueError:
            return
        alert_id = update.get("id") if isinstance(update, dict) else None
        if isinstance(alert_id, str):
            try:
                self.on_peer_update(device, alert_id)
            except SQLAlchemyError as exc:  # the live view misses it; nothing is lost
                log.debug("cannot announce the update of %s/%s: %s", device, alert_id, exc)

    def _device_message(self, topic: str, payload: bytes, retain: bool) -> None:
        if topic.endswith("/" + UPDATE):
            self._peer_update(topic, payload)
            return
        if topic.endswith("/ack"):
            if self.on_peer_ack is not None and len(payload) < 1024:
                try:
                    ack = json.loads(payload)
                    ack_id = ack.get("id") if isinstance(ack, dict) else None
                except ValueError:
                    ack_id = None
                device = topic_device(topic, self.prefix, "ack")
                if isinstance(ack_id, str) and device is not None:
                    try:
                        self.on_peer_ack(device, ack_id)
                    except SQLAlchemyError as exc:  # the live view misses it; nothing is lost
                        log.debug("cannot announce %s/%s: %s", device, ack_id, exc)
            return
        for kind in ("status", "health"):
            device = topic_device(topic, self.prefix, kind)
            if device is None or not payload:  # an empty payload clears a retained message
                continue
            try:
                if kind == "status":
                    value: Any = check_status(payload)
                else:
                    value = check_health(payload, self.cfg.mqtt.max_message_bytes)
                changed = self.store.device_message(device[:64], kind, value, retain)
            except Rejected as exc:
                self.metrics.device_messages.labels(kind=kind, outcome=exc.reason).inc()
                return
            except SQLAlchemyError as exc:
                self.metrics.device_messages.labels(kind=kind, outcome="failed").inc()
                log.warning("cannot store the %s of %s: %s", kind, device[:64], one_line(exc))
                return
            self.metrics.device_messages.labels(kind=kind, outcome="stored").inc()
            if changed and self.on_device is not None:
                self.on_device(device)

    def _enqueue(self, item: Pending) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                log.warning("store queue full; holding the broker back")

    # --- store worker -------------------------------------------------------------------
    def _take_batch(self) -> list[Pending]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.cfg.database.batch_wait_ms / 1000
        while len(batch) < self.cfg.database.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(left, 0.002))
        return batch

    def _store_loop(self) -> None:
        """Store batches until stopped and the queue is drained."""
        while True:
            batch = self._take_batch()
            self.metrics.queue_depth.set(self._queue.qsize())
            if batch:
                self._store_batch(batch)
            elif self._stop.is_set():
                return

    def _store_batch(self, batch: list[Pending]) -> None:
        attempt = 0
        while not self._stop.is_set():
            received = utcnow()
            try:
                with self.metrics.store_seconds.time():
                    new = self.store.store_alerts([p.alert for p in batch], received)
            except SQLAlchemyError as exc:
                self.metrics.store_errors.inc()
                if not is_transient(exc):
                    self._refused(batch, exc)
                    return
                attempt += 1
                delay = random.uniform(0, 1.5 ** min(10, attempt))
                log.warning("database unavailable (%s); retrying in %.1f s", one_line(exc), delay)
                self._stop.wait(delay)
                continue
            self._after_store(batch, new, received)
            return

    def _refused(self, batch: list[Pending], exc: SQLAlchemyError) -> None:
        """The database refuses the batch itself: find (and drop) the message it refuses."""
        if len(batch) == 1:
            log.error("cannot store alert %s; dropping it", batch[0].alert["id"], exc_info=exc)
            self.metrics.count("failed")
            self._ack(batch[0])
            return
        for single in batch:
            self._store_batch([single])

    def _after_store(self, batch: list[Pending], new: set[Key], received: datetime) -> None:
        fresh: list[dict[str, Any]] = []
        seen: set[Key] = set()
        for item in batch:
            key = key_of(item.alert)
            if key in new and key not in seen:
                fresh.append(item.alert)
            else:
                self.metrics.count("duplicate")
            seen.add(key)
            ack = json.dumps({"id": item.alert["id"], "status": "stored"})
            self.client.publish(f"{self.prefix}/{item.alert['device_id']}/ack", ack, qos=1)
            self.metrics.acks.inc()
            self._ack(item)
        self.metrics.count("stored", len(fresh))
        if fresh and self.on_stored is not None:
            try:
                self.on_stored(fresh, received)
            except Exception:
                log.exception("live update failed")
