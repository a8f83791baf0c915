"""The `safeguard` command line: run, check, analyze, listen, models."""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edge import __version__
from edge.config import Config, load_config
from edge.errors import ConfigError, SafeguardError

log = logging.getLogger("safeguard")
DEFAULT_CONFIG = Path("/etc/safeguard/config.yaml")


def _config(args: argparse.Namespace) -> Config:
    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    config = load_config(path)
    logging.getLogger().setLevel("DEBUG" if args.debug else config.logging.level)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from edge.daemon import Daemon

    return Daemon(_config(args)).run()


def _reach_broker(config: Config) -> str:
    host, port = config.mqtt.host, config.mqtt.port
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            # MQTT 3.1.1 CONNECT, clean session, keepalive 10 s, a throwaway client id.
            client = f"safeguard-check-{int(time.time())}".encode()
            body = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(client).to_bytes(2, "big") + client
            sock.sendall(bytes([0x10, len(body)]) + body)
            reply = sock.recv(4)
    except OSError as exc:
        raise SafeguardError(f"cannot reach the MQTT broker at {host}:{port}: {exc}") from None
    if len(reply) < 4 or reply[0] != 0x20:
        raise SafeguardError(f"{host}:{port} did not answer as an MQTT broker")
    if reply[3] != 0:
        raise SafeguardError(f"the MQTT broker at {host}:{port} refused us (code {reply[3]})")
    return f"{host}:{port}"


def cmd_check(args: argparse.Namespace) -> int:
    from edge.pipeline import load_yamnet

    config = _config(args)
    print(f"config: ok ({args.config or 'embedded defaults'})")
    model = load_yamnet(config)
    print(f"model: ok ({config.audio.model}, sha256 verified, {model.runtime})")
    print(f"broker: ok ({_reach_broker(config)})")
    return 0


def _progress(name: str) -> Callable[[float], None] | None:
    if not sys.stderr.isatty():
        return None

    def show(fraction: float) -> None:
        bar = "#" * int(fraction * 30)
        sys.stderr.write(f"\r{name[-40:]:40} [{bar:30}] {fraction:4.0%}")
        if fraction >= 1.0:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def cmd_analyze(args: argparse.Namespace) -> int:
    from edge.analyze import analyze_file
    from edge.pipeline import build_detector, hop_samples, load_yamnet

    config = _config(args)
    model = load_yamnet(config)
    failed = 0
    for name in args.files:
        detector = build_detector(config, model)
        try:
            records = analyze_file(Path(name), detector, hop_samples(config), name, _progress(name))
        except SafeguardError as exc:
            print(f"safeguard: {exc}", file=sys.stderr)
            failed += 1
            continue
        for record in records:
            if args.json:
                print(json.dumps(record.to_json()), flush=True)
            else:
                print(
                    f"{name}: {record.category:12} {record.start_s:8.2f}-{record.end_s:8.2f} s"
                    f"  peak {record.peak_score:.2f}  alert at {record.alert_at_s:.2f} s"
                )
        if not records and not args.json:
            print(f"{name}: no threat events")
    return 1 if failed else 0


def cmd_listen(args: argparse.Namespace) -> int:
    from edge.listen import listen

    return listen(_config(args), args.seconds, args.top)


def cmd_models(args: argparse.Namespace) -> int:
    from edge.models import fetch, load_manifest, verify

    directory: Path = args.dir or _config(args).models_dir
    failed = 0
    for spec in load_manifest().values():
        try:
            if args.action == "fetch":
                path, how = fetch(spec, directory, args.mirror)
                print(f"{spec.name}: {path} ({how}, sha256 ok)")
            else:
                print(f"{spec.name}: {verify(spec, directory)} (sha256 ok)")
        except SafeguardError as exc:
            print(f"{spec.name}: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safeguard", description=__doc__)
    parser.add_argument("--version", action="version", version=f"safeguard {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        help="config file (default: /etc/safeguard/"
        "config.yaml if present, else the embedded defaults)",
    )
    common.add_argument("--debug", action="store_true", help="debug logs and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="run the daemon").set_defaults(func=cmd_run)
    sub.add_parser(
        "check", parents=[common], help="validate config, load models, reach the broker"
    ).set_defaults(func=cmd_check)
    analyze = sub.add_parser("analyze", parents=[common], help="find threat events in files")
    analyze.add_argument("files", nargs="+", metavar="FILE", help="WAV, FLAC, MP3 or MP4")
    analyze.add_argument("--json", action="store_true", help="one JSON object per event")
    analyze.set_defaults(func=cmd_analyze)
    listen = sub.add_parser("listen", parents=[common], help="show what the microphone hears")
    listen.add_argument("--seconds", type=float, default=0, help="stop after this long (0: ^C)")
    listen.add_argument("--top", type=int, default=5, help="how many classes to show")
    listen.set_defaults(func=cmd_listen)
    models = sub.add_parser("models", parents=[common], help="fetch or verify model files")
    models.add_argument("action", choices=["fetch", "verify"])
    models.add_argument(
        "--from",
        dest="mirror",
        type=Path,
        help="copy from this mirror folder instead of downloading",
    )
    models.add_argument("--dir", type=Path, help="model folder (default: storage.dir/models)")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"safeguard: config error: {exc}", file=sys.stderr)
        return 2
    except SafeguardError as exc:
        if args.debug:
            log.exception("failed")
        print(f"safeguard: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
