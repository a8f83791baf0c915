"""The `safeguard` command line: run, check, analyze, listen, test-alert, models."""

from __future__ import annotations

import os

# One thread for numpy's BLAS, set before numpy loads: the daemon's matrix products are tiny
# (the log-mel front end, 25x257 by 257x64 every 0.25 s) and OpenBLAS's worker threads spin
# between calls: 43% of a core for the live daemon instead of 1.7% (bench/RESULTS.md).
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from edge import __version__  # noqa: E402
from edge.config import Config, load_config  # noqa: E402
from edge.errors import ConfigError, SafeguardError  # noqa: E402

if TYPE_CHECKING:
    from edge.analyze import EventRecord
    from edge.video import Backbone
    from edge.yamnet import Yamnet

log = logging.getLogger("safeguard")
DEFAULT_CONFIG = Path("/etc/safeguard/config.yaml")


def _config_path(args: argparse.Namespace) -> Path | None:
    """`--config`, else /etc/safeguard/config.yaml if present, else None (embedded defaults)."""
    path: Path | None = args.config
    return DEFAULT_CONFIG if path is None and DEFAULT_CONFIG.is_file() else path


def _config(args: argparse.Namespace) -> Config:
    config = load_config(_config_path(args))
    logging.getLogger().setLevel("DEBUG" if args.debug else config.logging.level)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from edge.daemon import Daemon

    return Daemon(_config(args)).run()


def _reach_broker(config: Config, timeout: float = 10.0) -> str:
    """Connect once as a side client (own client id, no session, no status messages)."""
    from edge.mqtt import MqttLink

    side = config.mqtt.model_copy(
        update={"client_id": f"safeguard-check-{os.getpid()}", "session_expiry": 0}
    )
    link = MqttLink(
        side,
        config.device.id,
        on_message=lambda _t, _p: None,
        on_connected=lambda: None,
        subscriptions=[],
        status=False,
    )
    where = f"{side.host}:{side.port}"
    link.start()
    try:
        if not link.wait_connected(timeout):
            if link.refused_connect:
                who = f"user {side.username!r}" if side.username else "no user name"
                secret = ", password from the secret mqtt_password" if side.username else ""
                raise SafeguardError(
                    f"the MQTT broker at {where} refused the connection: "
                    f"{link.refused_connect} ({who}{secret})"
                )
            raise SafeguardError(f"cannot reach the MQTT broker at {where} within {timeout:.0f} s")
    finally:
        link.stop(2.0)
    return where


def _fallback_channels(config: Config) -> list[str]:
    """The enabled fallback channels; ConfigError if one of them lacks its secret (the daemon
    would run without it)."""
    import threading

    from edge.fallback import make_channels

    a = config.alerts
    channels = make_channels(
        sms=a.sms, email=a.email, voice=a.voice, min_severity=a.min_severity,
        stop=threading.Event(), strict=True,
    )  # fmt: skip
    return [channel.name for channel in channels]


def _check_preview(config: Config) -> None:
    """The preview's password is set and its address can be bound (ConfigError otherwise); a
    port in use is only a warning: the running daemon holds it."""
    from edge.camera import FrameRing
    from edge.preview import PortInUse, PreviewServer

    preview = config.video.preview
    try:
        PreviewServer(preview, FrameRing(1, (2, 2, 3))).stop()
    except PortInUse as exc:
        print(f"preview: warning: {exc} (if it is the running safeguard, that is fine)")
        return
    print(f"preview: ok (password set, {preview.host}:{preview.port} can be bound)")


def cmd_check(args: argparse.Namespace) -> int:
    from edge.pipeline import build_detector, load_yamnet

    config = _config(args)
    print(f"config: ok ({_config_path(args) or 'embedded defaults'})")
    if args.config_only:
        return 0
    from edge.outbox import check_storage

    check_storage(config.storage.dir)
    print(f"storage: ok ({config.storage.dir} writable)")
    model = load_yamnet(config)
    print(f"model: ok ({config.audio.model}, sha256 verified, {model.runtime})")
    if config.audio.source.startswith("file:"):  # what `run` would replay
        from edge.decode import blocks
        from edge.errors import CaptureError

        path = Path(config.audio.source.removeprefix("file:"))
        replay = blocks(path)
        try:
            if next(replay, None) is None:
                raise CaptureError(f"audio.source {path}: holds no audio samples")
        finally:
            replay.close()
        print(f"audio source: ok ({config.audio.source} decodes)")
    categories = ", ".join(build_detector(config, model).categories)  # loads the heads too
    print(f"categories: ok ({categories or 'none enabled'})")
    if config.video.source != "none":  # what the video worker loads at start
        from edge.videopipe import build_analyzer, load_backbone

        head = build_analyzer(config.video, load_backbone(config.models_dir)).head
        print(f"video: ok (backbone sha256 verified, violence head over {head.window} frames)")
        from edge.camera import check_source, redact

        how = check_source(config.video.source, config.video.rtsp_transport)
        print(f"video source: ok ({redact(config.video.source)}: {how})")
        if config.video.preview.enabled:  # its password and its port, as `run` needs them
            _check_preview(config)
    print(f"broker: ok ({_reach_broker(config)})")
    for name in _fallback_channels(config):
        print(f"{name}: ok (enabled, its secrets are set)")
    if config.listener.enabled:
        from edge.secrets import require_secret
        from edge.upload import check_listener

        url = check_listener(config.listener, require_secret("api_token"))
        print(f"listener: ok ({url}, token accepted; clips are uploaded)")
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


def _analyze_one(
    path: Path, name: str, config: Config, model: Yamnet, video: list[Backbone]
) -> tuple[list[EventRecord], SafeguardError | None]:
    """The events of one file: its sound, and its picture when it has one; a failure of the
    picture comes back beside the sound's events."""
    from edge.analyze import analyze_file
    from edge.decode import is_video, stream_kinds
    from edge.pipeline import build_detector, hop_samples

    # the streams decide, not the suffix (.ts, .mpg, .m2ts...); the suffix when ffprobe cannot
    kinds = stream_kinds(path) if path.is_file() else None
    has_picture = "video" in kinds if kinds is not None else is_video(path)
    records: list[EventRecord] = []
    sound_error: SafeguardError | None = None
    if not has_picture or kinds is None or "audio" in kinds:
        detector = build_detector(config, model)
        try:
            records = analyze_file(path, detector, hop_samples(config), name, _progress(name))
        except SafeguardError as exc:
            if not has_picture:
                raise
            sound_error = exc  # e.g. no ffmpeg: OpenCV may still read the picture
    if has_picture:  # violence events (OpenCV is loaded for video files only)
        from edge.videopipe import analyze_video, build_analyzer, load_backbone

        try:
            if not video:
                video.append(load_backbone(config.models_dir, config.video.threads))
            analyzer = build_analyzer(config.video, video[0])
            found = analyze_video(path, analyzer, config.video, name)
        except SafeguardError as exc:
            if sound_error is not None:
                raise SafeguardError(f"{exc}; its sound: {sound_error}") from exc
            if not records:
                raise
            return records, exc
        records = sorted([*records, *found], key=lambda r: (r.alert_at_s, r.category))
    return records, sound_error


def cmd_analyze(args: argparse.Namespace) -> int:
    from edge.pipeline import load_yamnet

    config = _config(args)
    model = load_yamnet(config)
    video: list[Backbone] = []  # loaded at the first video file
    failed = 0
    for name in args.files:
        try:
            records, error = _analyze_one(Path(name), name, config, model, video)
        except SafeguardError as exc:
            records, error = [], exc
        if error is not None:
            if args.debug:
                log.error("%s failed", name, exc_info=error)
            print(f"safeguard: {error}", file=sys.stderr)
            failed += 1
            if not records:
                continue
        for record in records:
            if args.json:
                print(json.dumps(record.to_json()), flush=True)
            else:
                print(
                    f"{name}: {record.category:12} {record.start_s:8.3f}-{record.end_s:8.3f} s"
                    f"  peak {record.peak_score:.2f}  alert at {record.alert_at_s:.3f} s"
                )
        if not records and not args.json:
            print(f"{name}: no threat events")
    return 1 if failed else 0


def cmd_listen(args: argparse.Namespace) -> int:
    from edge.listen import listen

    return listen(_config(args), args.seconds, args.top)


def cmd_test_alert(args: argparse.Namespace) -> int:
    from edge.delivery import run_test_alert

    config = _config(args)
    location = config.device.location.model_dump() if config.device.location else None
    results = run_test_alert(config.mqtt, config.alerts, config.device.id, location)
    for channel, ok, detail in results:
        print(f"{channel}: {'ok' if ok else 'FAILED'} ({detail})")
    return 0 if results and all(ok for _, ok, _ in results) else 1


def cmd_models(args: argparse.Namespace) -> int:
    from edge.models import fetch, load_manifest, prepare, verify

    directory: Path = args.dir or _config(args).models_dir
    if args.action == "verify" and args.mirror is not None:
        raise SafeguardError("--from is for `models fetch`; `models verify` checks --dir only")
    if args.action == "fetch":
        prepare(directory, args.mirror)
    failed = 0
    for spec in load_manifest().values():
        try:
            if args.action == "fetch":
                path, how = fetch(spec, directory, args.mirror)
                print(f"{spec.name}: {path} ({how}, sha256 ok)")
            else:
                print(f"{spec.name}: {verify(spec, directory)} (sha256 ok)")
        except SafeguardError as exc:
            print(f"safeguard: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _at_least(low: float, kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}")
        return value

    parse.__name__ = kind.__name__
    return parse


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
    # --debug before or after the command (SUPPRESS: the command's default does not undo it)
    parser.add_argument("--debug", action="store_true", help="debug logs and tracebacks")
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="debug logs and tracebacks"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="run the daemon").set_defaults(func=cmd_run)
    check = sub.add_parser(
        "check", parents=[common], help="validate config, load models, reach the broker"
    )
    check.add_argument(
        "--config-only", action="store_true", help="only validate the config file and stop"
    )
    check.set_defaults(func=cmd_check)
    analyze = sub.add_parser("analyze", parents=[common], help="find threat events in files")
    analyze.add_argument("files", nargs="+", metavar="FILE", help="WAV, FLAC, MP3 or MP4")
    analyze.add_argument("--json", action="store_true", help="one JSON object per event")
    analyze.set_defaults(func=cmd_analyze)
    listen = sub.add_parser("listen", parents=[common], help="show what the microphone hears")
    listen.add_argument(
        "--seconds", type=_at_least(0.0, float), default=0, help="stop after this long (0: ^C)"
    )
    listen.add_argument("--top", type=_at_least(1, int), default=5, help="how many classes to show")
    listen.set_defaults(func=cmd_listen)
    sub.add_parser(
        "test-alert", parents=[common], help="send a test alert through every configured channel"
    ).set_defaults(func=cmd_test_alert)
    models = sub.add_parser("models", parents=[common], help="fetch or verify model files")
    models.add_argument("action", choices=["fetch", "verify"])
    models.add_argument(
        "--from",
        dest="mirror",
        type=Path,
        help="copy from this mirror folder instead of downloading",
    )
    models.add_argument(
        "--dir", type=Path, help="model folder (default: models.dir, else storage.dir/models)"
    )
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
        return 1
    except SafeguardError as exc:
        if args.debug:
            log.exception("failed")
        print(f"safeguard: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `safeguard analyze --json ... | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # quiet exit flush
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
