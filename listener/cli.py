"""`safeguard-listener [--config PATH] [--check] [--debug]`."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from listener.app import build_state, create_app
from listener.config import ConfigError, check_files, load, read_secret
from listener.state import State
from listener.store import StoreError

log = logging.getLogger(__name__)

DESCRIPTION = "Stores Safeguard alerts from MQTT, acknowledges them, serves the API and dashboard."
EPILOG = (
    "The API token comes from the environment variable SAFEGUARD_API_TOKEN or the systemd "
    "credential api_token ($CREDENTIALS_DIRECTORY/api_token); the broker password from "
    "SAFEGUARD_MQTT_PASSWORD or the credential mqtt_password."
)


class ListenError(Exception):
    """The HTTP address cannot be bound (in use, not an address of this host, ...)."""


def listen_sockets(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address of `host` on `port`, as asyncio's create_server binds.

    Bound before anything else starts, so that a port in use is said at once, in one line.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(f"cannot listen on {where}: {exc}") from exc
    return sockets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="safeguard-listener", description=DESCRIPTION, epilog=EPILOG
    )
    parser.add_argument("--config", type=Path, help="YAML config (default: built-in defaults)")
    parser.add_argument("--check", action="store_true", help="validate config and database")
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    sockets: list[socket.socket] = []
    try:
        cfg = load(args.config)
        check_files(cfg)
        token = read_secret("SAFEGUARD_API_TOKEN", "api_token")
        if not token:
            raise ConfigError(
                "no API token: set SAFEGUARD_API_TOKEN or provide the systemd credential api_token"
            )
        if not args.check:  # --check may run beside the running service
            sockets = listen_sockets(cfg.http.host, cfg.http.port)
        state = build_state(cfg, token, wait_for_database=not args.check)
    except (ConfigError, ListenError, StoreError) as exc:
        for sock in sockets:
            sock.close()
        if args.debug:
            raise
        print(f"safeguard-listener: {exc}", file=sys.stderr)
        return 1
    if args.check:
        print("config and database OK")
        state.store.close()
        return 0
    server = Server(
        state,
        uvicorn.Config(
            create_app(state),
            host=cfg.http.host,
            port=cfg.http.port,
            log_level="debug" if args.debug else "info",
            timeout_graceful_shutdown=3,
            access_log=args.debug,
        ),
    )
    for sock in sockets:
        log.info("serving on http://%s", _address(sock))
    server.run(sockets=sockets)
    return 0


class Server(uvicorn.Server):
    """uvicorn's server that ends the live streams as soon as it is told to stop (it waits
    for open connections before the app's own shutdown, and a stream never ends itself)."""

    def __init__(self, state: State, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.state.hub.close_soon()
        super().handle_exit(sig, frame)


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


if __name__ == "__main__":
    sys.exit(main())
