"""install.sh into a staging root (`--root`): the tree it leaves, a second run that changes
nothing, an edited config that is kept, uninstall that keeps data and `--purge` that does not."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT, SHARED_MODELS, require_shared

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a fresh venv: ~75 s when idle


def install(root: Path, *args: str) -> str:
    out = subprocess.run(
        [str(ROOT / "install.sh"), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    models = require_shared(SHARED_MODELS)
    root = tmp_path_factory.mktemp("stage")
    return root, install(root, "--models-from", str(models), "--with-listener")


def test_tree(staged: tuple[Path, str]) -> None:
    root, out = staged
    assert "systemctl status safeguard" in out
    assert "journalctl -u safeguard -f" in out
    assert (root / "etc/systemd/system/safeguard.service").read_text() == (
        ROOT / "systemd/safeguard.service"
    ).read_text()
    assert (root / "etc/systemd/system/safeguard-listener.service").is_file()
    assert (root / "etc/safeguard/config.yaml").read_text() == (ROOT / "config.yaml").read_text()
    for secret in ("etc/safeguard/secrets.env", "etc/safeguard/listener.api_token"):
        assert stat.S_IMODE((root / secret).stat().st_mode) == 0o600, secret
    assert len((root / "etc/safeguard/listener.api_token").read_text()) == 64
    plan = (root / "safeguard-install.plan").read_text()
    assert "useradd --system --user-group" in plan
    assert "usermod --append --groups audio,video safeguard" in plan
    assert "systemctl enable safeguard safeguard-listener" in plan
    assert "mosquitto" in plan  # the shipped config uses a local broker
    assert "gstreamer1.0-tools" not in plan  # no camera in the shipped config


def test_venv_runs_and_models_verify(staged: tuple[Path, str]) -> None:
    root, _ = staged
    exe = root / "opt/safeguard/venv/bin/safeguard"
    version = subprocess.run(
        [str(exe), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("safeguard ")
    verify = subprocess.run(
        [str(exe), "models", "verify", "--dir", str(root / "var/lib/safeguard/models")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.count("sha256 ok") >= 3


def test_installed_unit_verifies_against_the_installed_venv(staged: tuple[Path, str]) -> None:
    root, _ = staged
    unit = (root / "etc/systemd/system/safeguard.service").read_text()
    copy = root / "verify" / "safeguard.service"
    copy.parent.mkdir(exist_ok=True)
    copy.write_text(unit.replace("/opt/safeguard/", f"{root}/opt/safeguard/"))
    out = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_second_run_is_idempotent_and_keeps_an_edited_config(staged: tuple[Path, str]) -> None:
    root, _ = staged
    config = root / "etc/safeguard/config.yaml"
    edited = config.read_text().replace("id: kitchen-pi", "id: hall-pi")
    edited = edited.replace("  source: none", '  source: "gst:videotestsrc is-live=true"')
    assert "gst:videotestsrc" in edited
    config.write_text(edited)
    (root / "etc/safeguard/secrets.env").chmod(0o644)
    out = install(root, "--models-from", str(SHARED_MODELS), "--with-listener")
    assert "is current" in out  # the venv is not rebuilt from an unchanged source
    assert config.read_text() == edited
    assert (root / "etc/safeguard/config.yaml.dist").read_text() == (
        ROOT / "config.yaml"
    ).read_text()
    assert stat.S_IMODE((root / "etc/safeguard/secrets.env").stat().st_mode) == 0o600
    # a GStreamer camera in the kept config brings GStreamer's command-line tools
    assert "gstreamer1.0-tools" in (root / "safeguard-install.plan").read_text()


def test_uninstall_keeps_data_and_purge_removes_it(staged: tuple[Path, str]) -> None:
    root, _ = staged
    out = install(root, "--uninstall")
    assert "kept /etc/safeguard" in out
    assert not (root / "opt/safeguard").exists()
    assert not (root / "etc/systemd/system/safeguard.service").exists()
    assert (root / "etc/safeguard/config.yaml").is_file()
    assert (root / "var/lib/safeguard/models/yamnet.tflite").is_file()
    assert "systemctl disable --now" in (root / "safeguard-install.plan").read_text()
    install(root, "--uninstall", "--purge")
    assert not (root / "etc/safeguard").exists()
    assert not (root / "var/lib/safeguard").exists()
    assert "userdel safeguard" in (root / "safeguard-install.plan").read_text()


@pytest.mark.parametrize("script", ["install.sh", "scripts/pi-check.sh"])
def test_shellcheck_clean(script: str) -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.fail("shellcheck is not installed: run `make deps`", pytrace=False)
    out = subprocess.run(
        [exe, str(ROOT / script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stdout
