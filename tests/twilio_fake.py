"""A loopback HTTP server that speaks enough of Twilio's REST API for the real `twilio` client.

POST /2010-04-01/Accounts/{AccountSid}/Messages.json (To, From, Body; form-encoded, HTTP
Basic auth with the account SID and auth token) answers 201 with a message resource, like
Twilio; Calls.json (To, From, Twiml or Url) answers 201 with a call resource. Errors are
Twilio's JSON error bodies. `fail_next(status, n)` makes the next n requests fail.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

_PATH = re.compile(r"^/2010-04-01/Accounts/(AC[0-9a-f]{32})/(Messages|Calls)\.json$")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


@dataclass
class FakeTwilio:
    account_sid: str = field(default_factory=lambda: "AC" + secrets.token_hex(16))
    auth_token: str = field(default_factory=lambda: secrets.token_hex(16))
    messages: list[dict[str, Any]] = field(default_factory=list)  # created (201) messages
    calls: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[float, str, int]] = field(default_factory=list)  # (time, path, status)
    _failures: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(self, status: int, count: int = 1) -> None:
        with self._lock:
            self._failures.extend([status] * count)

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                status, payload = fake.handle(self.path, self.headers.get("Authorization"), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _error(self, status: int, code: int, message: str) -> tuple[int, dict[str, Any]]:
        return status, {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }

    def handle(self, path: str, auth: str | None, body: str) -> tuple[int, dict[str, Any]]:
        status, payload = self._handle(path, auth, body)
        with self._lock:
            self.requests.append((time.monotonic(), path, status))
        return status, payload

    def _handle(self, path: str, auth: str | None, body: str) -> tuple[int, dict[str, Any]]:
        match = _PATH.match(path.split("?", maxsplit=1)[0])
        if match is None:
            return self._error(404, 20404, "The requested resource was not found")
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if auth != f"Basic {expected}" or match.group(1) != self.account_sid:
            return self._error(401, 20003, "Authenticate")
        with self._lock:
            if self._failures:
                failure = self._failures.pop(0)
                return self._error(failure, 20500 if failure >= 500 else 20429, "Injected failure")
        form = {k: v[0] for k, v in parse_qs(body).items()}
        to, from_ = form.get("To", ""), form.get("From", "")
        if not _E164.match(to):
            return self._error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not _E164.match(from_):
            return self._error(400, 21212, f"The 'From' number {from_} is not valid.")
        kind = match.group(2)
        now = formatdate(usegmt=True)
        if kind == "Messages":
            if not form.get("Body"):
                return self._error(400, 21602, "Message body is required.")
            sid = "SM" + secrets.token_hex(16)
            resource = {
                "sid": sid,
                "body": form["Body"],
                "num_segments": "1",
                "direction": "outbound-api",
                "status": "queued",
                "price": None,
                "error_code": None,
            }
            store = self.messages
        else:
            if not form.get("Twiml") and not form.get("Url"):
                return self._error(400, 21205, "Url or Twiml is required.")
            sid = "CA" + secrets.token_hex(16)
            resource = {
                "sid": sid,
                "status": "queued",
                "direction": "outbound-api",
                "twiml": form.get("Twiml"),
            }
            store = self.calls
        resource.update(
            {
                "account_sid": self.account_sid,
                "to": to,
                "from": from_,
                "date_created": now,
                "date_updated": now,
                "date_sent": None,
                "api_version": "2010-04-01",
                "uri": f"/2010-04-01/Accounts/{self.account_sid}/{kind}/{sid}.json",
            }
        )
        with self._lock:
            store.append(resource)
        return 201, resource
