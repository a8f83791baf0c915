"""`safeguard-listener` as its users meet it: every error is one line naming what is wrong.

A config that is not UTF-8, not YAML, has a key twice or a boolean where a number belongs; an
HTTP port that is taken (said before the broker is contacted); a database that cannot be
reached (the URL without its password, the driver's first line). And the normal start still
serves on the port it bound itself.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from listener.cli import main
from listener.config import ConfigError, load, parse
from tests.helpers import (
    Mosquitto,
    free_port,
    postgres_cluster,
    spawn_listener,
    wait_port,
)

TOKEN = "test-token-0123456789"


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEGUARD_API_TOKEN", TOKEN)


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The single line `main(argv)` prints to stderr when it exits 1, without the prefix."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.endswith("\n"), err
    assert err.count("\n") == 1, err
    assert err.startswith("safeguard-listener: "), err
    return err[len("safeguard-listener: ") : -1]


def check(config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    return one_line_error(["--config", str(config), "--check"], capsys)


def test_a_config_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(b"\xff\xfe\x00bad")
    assert check(config, capsys) == f"{config}: not UTF-8 text (invalid start byte at byte 0)"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "mqtt:\n  host: [a\n  port: 1\n",
            "line 3, column 7: expected ',' or ']', but got ':'"
            " (while parsing a flow sequence at line 2, column 9)",
        ),
        ("mqtt:\n  port: 1\n\thost: a\n", "line 3, column 1: found character '\\t'"),
        ("http: {host: 'a}\n", "line 2, column 1: found unexpected end of stream"),
        ("mqtt: {host: a}\nhttp: x: y\n", "line 2, column 8: mapping values are not allowed"),
        ("mqtt:\n  host: a\x00\n", "line 2, column 10: character #x0000 is not allowed in YAML"),
    ],
)
def test_yaml_syntax_errors_are_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, where: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text, encoding="utf-8")
    message = check(config, capsys)
    assert message.startswith(f"{config}: not valid YAML: {where}"), message
    assert "<unicode string>" not in message


def test_a_key_given_twice_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("mqtt:\n  port: 1883\n  host: a\n  port: 1884\n")
    assert check(config, capsys) == (
        f"{config}: not valid YAML: line 4, column 3: 'port' is given twice (first on line 2)"
    )
    # the same key in different mappings, and keys a YAML merge key brings in, are not twice
    fine = tmp_path / "fine.yaml"
    fine.write_text("mqtt: &m {port: 1883}\nhttp: {<<: *m, port: 8081}\n")
    cfg = load(fine)
    assert (cfg.mqtt.port, cfg.http.port) == (1883, 8081)


@pytest.mark.parametrize(
    "key",
    ["mqtt.port", "mqtt.keepalive", "database.batch_size", "http.port", "http.max_clip_bytes"],
)
def test_a_boolean_or_fraction_is_not_a_number(key: str) -> None:
    section, field = key.split(".")
    for value in (True, False, 1883.0):
        with pytest.raises(ConfigError, match=rf"^config: {key}: Input should be a valid integer"):
            parse({section: {field: value}})
    assert getattr(getattr(parse({section: {field: 2048}}), section), field) == 2048


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port somebody else already listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield int(other.getsockname()[1])


def test_a_port_in_use_is_said_before_the_broker_is_contacted(
    tmp_path: Path,
    mosquitto: Mosquitto,
    taken_port: int,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"mqtt: {{port: {mosquitto.port}}}\n"
        f"database: {{url: 'sqlite:///{tmp_path}/alerts.db'}}\n"
        f"http: {{host: 127.0.0.1, port: {taken_port}}}\n"
    )
    assert one_line_error(["--config", str(config)], capsys) == (
        f"cannot listen on 127.0.0.1:{taken_port}: [Errno 98] Address already in use"
    )
    assert "connected to" not in caplog.text
    assert not (tmp_path / "alerts.db").exists()  # nor the database touched


def start_listener(
    tmp_path: Path, mosquitto: Mosquitto
) -> tuple[subprocess.Popen[bytes], int, Path]:
    url = f"sqlite:///{tmp_path}/alerts.db"
    return spawn_listener(tmp_path, "listener", mosquitto.port, url, TOKEN)


def test_it_serves_on_the_port_it_bound(tmp_path: Path, mosquitto: Mosquitto) -> None:
    process, port, log = start_listener(tmp_path, mosquitto)
    try:
        wait_port(port, timeout=60)
        deadline = time.monotonic() + 30
        health: dict[str, object] = {}
        while time.monotonic() < deadline and not health.get("mqtt"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                health = json.loads(r.read())
            time.sleep(0.05)
        assert health == {"status": "ok", "mqtt": True, "database": True}
    finally:
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then ends itself by the signal it caught (what systemd expects)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()
    text = log.read_text()
    assert f"serving on http://127.0.0.1:{port}" in text
    assert "Application shutdown complete" in text


def test_an_unreachable_database_is_one_line_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(f"database: {{url: 'postgresql://nobody:s3cret@127.0.0.1:{port}/x'}}\n")
    message = check(config, capsys)
    assert message == (
        f"database.url postgresql://nobody@127.0.0.1:{port}/x: cannot migrate the database: "
        f'connection failed: connection to server at "127.0.0.1", port {port} failed: '
        "Connection refused"
    )


def test_a_missing_database_names_the_driver_s_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{postgres_cluster().port}/sg_no_such_database"
    config = tmp_path / "c.yaml"
    config.write_text(f"database: {{url: '{url}'}}\n")
    message = check(config, capsys)
    assert message.startswith(f"database.url {url}: cannot migrate the database: "), message
    assert message.endswith('database "sg_no_such_database" does not exist'), message


def test_an_unknown_database_driver(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("database: {url: 'postgresql+nosuchdriver://u:pw@h/db'}\n")
    message = check(config, capsys)
    assert message.startswith("database.url postgresql+nosuchdriver://u@h/db: "), message
    assert "pw" not in message


def test_a_missing_ca_file_and_a_credential_that_is_not_utf8_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"database: {{url: 'sqlite:///{tmp_path}/alerts.db'}}\n"
        "mqtt: {tls: true, ca_file: /nonexistent/ca.pem}\n"
        f"http: {{port: {free_port()}}}\n"
    )
    line = one_line_error(["--config", str(config)], capsys)
    assert line == "mqtt.ca_file /nonexistent/ca.pem: No such file or directory"
    assert not (tmp_path / "alerts.db").exists()  # said before the database is touched
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    config.write_text(config.read_text().replace("/nonexistent/ca.pem", str(not_pem)))
    assert one_line_error(["--config", str(config)], capsys).startswith(f"mqtt.ca_file {not_pem}:")

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api_token").write_bytes(b"\xff\xfetoken\n")
    monkeypatch.delenv("SAFEGUARD_API_TOKEN")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert check(config, capsys) == f"{creds / 'api_token'}: not UTF-8 text"


def test_help_names_the_token_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "SAFEGUARD_API_TOKEN" in out
    assert "$CREDENTIALS_DIRECTORY/api_token" in out


def test_stopping_with_an_open_dashboard_is_quick_and_quiet(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """SIGTERM with a live stream open: the stream is ended first, so uvicorn need not wait
    for it (it waited 3 s and logged an ERROR with a traceback)."""
    process, port, log = start_listener(tmp_path, mosquitto)
    try:
        wait_port(port, timeout=60)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/live", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=10) as stream:
            assert stream.readline() == b"retry: 2000\n"
            process.send_signal(signal.SIGTERM)
            asked = time.monotonic()
            assert process.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()
            took = time.monotonic() - asked
            rest = stream.read()  # the stream ended cleanly, not cut off
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    text = log.read_text()
    assert took < 2.0, (took, text)
    assert "ERROR" not in text, text
    assert "Traceback" not in text, text
    assert "Application shutdown complete" in text
    assert rest.endswith(b"\n\n") or rest == b"", rest
