"""Secrets (MQTT password, Twilio auth token, SMTP password): never from YAML.

A secret named `twilio_auth_token` is read from the environment variable
`SAFEGUARD_TWILIO_AUTH_TOKEN`, or else from `$CREDENTIALS_DIRECTORY/twilio_auth_token`
(systemd's `LoadCredential=`). Values are stripped of surrounding whitespace.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from edge.errors import ConfigError

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def env_name(name: str) -> str:
    """The environment variable that holds secret `name`."""
    return "SAFEGUARD_" + name.upper()


def read_secret(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The secret `name`, or None when neither the environment nor the credentials hold it."""
    if not _NAME.match(name):
        raise ConfigError(f"invalid secret name {name!r}")
    env = os.environ if environ is None else environ
    value = env.get(env_name(name))
    if value:
        return value.strip()
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = Path(directory) / name
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read the credential {path}: {exc.strerror}") from None
        return text or None
    return None


def require_secret(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The secret `name`, or ConfigError saying where to put it."""
    value = read_secret(name, environ)
    if value is None:
        raise ConfigError(
            f"secret {name!r} is missing: set {env_name(name)} or provide "
            f"$CREDENTIALS_DIRECTORY/{name}"
        )
    return value
