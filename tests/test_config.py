"""Config errors name the key path and the YAML line; defaults and merging behave."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import Config, load_config, parse_config
from edge.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.yaml")
    return str(info.value)


def test_embedded_defaults_are_valid() -> None:
    config = load_config(None)
    assert config.mqtt.host == "127.0.0.1"
    assert config.mqtt.port == 1883
    assert config.mqtt.prefix == "safeguard"
    assert config.audio.source == "default"
    assert config.video.source == "none"
    assert {"scream", "gunshot", "glass_break"} <= set(config.detection.categories)


def test_shipped_config_yaml_is_valid() -> None:
    config = load_config(ROOT / "config.yaml")
    assert config.storage.dir == Path("/var/lib/safeguard")


def test_unknown_key_names_path_line_and_suggestion() -> None:
    message = error_of("device:\n  id: pi\naudio:\n  sorce: default\n")
    assert "audio.sorce: unknown key; did you mean 'source'?" in message
    assert "(line 4)" in message


def test_out_of_bounds_value_names_path_and_line() -> None:
    message = error_of("mqtt:\n  host: x\n  port: 70000\n")
    assert "mqtt.port:" in message
    assert "65535" in message
    assert "(line 3)" in message


def test_list_items_are_addressed_by_index() -> None:
    text = (
        "detection:\n  categories:\n    scream:\n      classes:\n        - Screaming\n        - 5\n"
    )
    message = error_of(text)
    assert "detection.categories.scream.classes[1]" in message
    assert "(line 6)" in message


def test_cross_field_checks() -> None:
    text = "detection:\n  categories:\n    gunshot:\n      smoothing: {on: 0.3, off: 0.6}\n"
    message = error_of(text)
    assert "detection.categories.gunshot.smoothing" in message
    assert "off (0.6) must not be above on (0.3)" in message


def test_hop_must_be_a_multiple_of_10_ms() -> None:
    assert "multiple of 0.01" in error_of("audio: {hop_s: 0.255}\n")


def test_bad_source_and_bad_yaml() -> None:
    assert "audio.source" in error_of("audio: {source: 'usb mic'}\n")
    assert "not valid YAML" in error_of("audio: [unclosed\n")
    assert "top level must be a mapping" in error_of("- a\n- b\n")


def test_user_settings_merge_over_builtin_categories() -> None:
    config = parse_config(
        "detection:\n  categories:\n    scream:\n      smoothing: {refractory_s: 9}\n"
        "    siren:\n      classes: [Siren]\n      severity: info\n"
    )
    scream = config.detection.categories["scream"]
    builtin = Config().detection.categories["scream"]
    assert scream.smoothing.refractory_s == 9
    assert scream.classes == builtin.classes  # untouched fields keep the built-in values
    assert scream.smoothing.on == builtin.smoothing.on
    assert config.detection.categories["siren"].severity == "info"


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_errors_are_one_line_with_line_and_column() -> None:
    message = error_of("mqtt:\n  host: [a,\n")
    assert "\n" not in message
    assert "not valid YAML: line 3, column 1: expected the node content" in message


def test_a_key_given_twice_is_an_error() -> None:
    message = error_of("mqtt:\n  host: a\n  port: 1884\n  host: b\n")
    assert "line 4, column 3: 'host' is given twice (first on line 2)" in message


def test_a_config_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match=r"c\.yaml: not UTF-8 text"):
        load_config(path)


def test_true_or_false_is_not_taken_for_a_number() -> None:
    assert error_of("mqtt:\n  port: true\n").endswith(
        "mqtt.port: expected a number, not true/false (line 2)"
    )
    assert "expected a number" in error_of(
        "detection:\n  categories:\n    scream:\n      smoothing: {refractory_s: true}\n"
    )
    assert parse_config("alerts:\n  sms: {enabled: false}\n")  # a real boolean stays fine


def test_debug_goes_before_or_after_the_command() -> None:
    from edge.cli import _parser

    parser = _parser()
    assert parser.parse_args(["--debug", "check"]).debug
    assert parser.parse_args(["check", "--debug"]).debug
    assert not parser.parse_args(["check"]).debug


def test_a_control_character_is_named_with_its_line_and_column() -> None:
    assert error_of("mqtt:\n  host: b\x01\n").endswith(
        "not valid YAML: line 2, column 10: character #x0001 is not allowed in YAML"
    )


def test_an_enabled_channel_that_could_never_send_is_a_config_error() -> None:
    assert error_of("alerts:\n  sms: {enabled: true, to: ['+14155550101']}\n").endswith(
        "alerts.sms: enabled, but account_sid and from not set: it could never send (line 2)"
    )
    assert "alerts.voice: enabled, but to, account_sid and from not set" in error_of(
        "alerts:\n  voice: {enabled: true}\n"
    )
    assert "alerts.email: enabled, but to not set" in error_of(
        "alerts:\n  email: {enabled: true, from: a@example.org}\n"
    )
    assert "resend_max (5) must not be below resend_after (10)" in error_of(
        "alerts: {resend_max: 5}\n"
    )


@pytest.mark.parametrize("name", ["siren+", "glass#", "a/b", "with space", "x" * 41])
def test_a_category_name_must_be_a_plain_topic_level(name: str) -> None:
    """`+`, `#` and `/` in a category name made its MQTT state topic unpublishable, which killed
    the delivery thread at start."""
    message = error_of(f"detection:\n  categories:\n    {name!r}:\n      classes: [Siren]\n")
    assert "detection.categories" in message
    assert "use 1-40 letters, digits" in message


def test_the_shipped_config_names_no_device_and_no_place() -> None:
    """It named every device `kitchen-pi` at "12 Example Road": two devices on one broker took
    each other's session, and SMS sent responders to the example address."""
    config = load_config(ROOT / "config.yaml")
    assert config.device.id == Config().device.id  # the host name
    assert config.device.location is None


def test_a_section_left_with_comments_only_takes_its_defaults() -> None:
    assert parse_config("device:\n  # id: kitchen-pi\naudio:\n").device == Config().device


def test_the_analysis_rate_cannot_exceed_the_kept_frame_rate() -> None:
    message = error_of("video: {fps: 30, max_fps: 5}\n")
    assert "video" in message
    assert "fps (30) must not be above max_fps (5)" in message
