"""`safeguard-listener [--config PATH] [--check] [--debug]`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn

from listener.app import build_state, create_app
from listener.config import ConfigError, load, read_secret
from listener.store import StoreError

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="safeguard-listener", description=__doc__)
    parser.add_argument("--config", type=Path, help="YAML config (default: built-in defaults)")
    parser.add_argument("--check", action="store_true", help="validate config and database")
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = load(args.config)
        token = read_secret("SAFEGUARD_API_TOKEN", "api_token")
        if not token:
            raise ConfigError(
                "no API token: set SAFEGUARD_API_TOKEN or provide the systemd credential api_token"
            )
        state = build_state(cfg, token)
    except (ConfigError, StoreError) as exc:
        if args.debug:
            raise
        print(f"safeguard-listener: {exc}", file=sys.stderr)
        return 1
    if args.check:
        print("config and database OK")
        state.store.close()
        return 0
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(state),
            host=cfg.http.host,
            port=cfg.http.port,
            log_level="debug" if args.debug else "info",
            timeout_graceful_shutdown=3,
            access_log=args.debug,
        )
    )
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
