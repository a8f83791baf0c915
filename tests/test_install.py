"""install.sh into a staging root (`--root`): the tree it leaves, a second run that changes
nothing, an edited config that is kept and an unedited old default that is upgraded, a missing
camera model, uninstall that keeps data and `--purge` that does not; what it refuses."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, SHARED_MODELS, require_shared, run_beside_shadows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a fresh venv: ~75 s when idle

# What install.sh builds from (the rest of the checkout, bench/ among it, is not needed).
SOURCE = [
    "install.sh", "config.yaml", "config.listener.yaml", "pyproject.toml", "README.md",
    "systemd", "docs", "edge", "listener", "converter", "models_tflite",
]  # fmt: skip
VIDEO_MODEL = "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"


def run_install(
    root: Path, *args: str, src: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(src / "install.sh"), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=env,
    )


def install(root: Path, *args: str, src: Path = ROOT) -> str:
    out = run_install(root, *args, src=src)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def unit_setting(unit: Path, key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", unit.read_text(), re.MULTILINE)


def readable_by_others(path: Path) -> bool:
    """Whether a user outside the file's owner and group (a DynamicUser=) can read `path`."""
    if not path.stat().st_mode & stat.S_IROTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)


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
    assert stat.S_IMODE((root / "etc/safeguard/listener.yaml").stat().st_mode) & 0o007 == 0


def test_the_summary_checks_with_the_services_user_and_secrets(staged: tuple[Path, str]) -> None:
    """A shell has neither the service's user nor /etc/safeguard/secrets.env: the summary's
    check command runs like the service, and docs/device.md gives the same command."""
    _, out = staged
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if "sudo systemd-run" in line)
    command = " ".join(line.strip().rstrip("\\").strip() for line in lines[start : start + 3])
    argv = shlex.split(command)
    assert argv[:7] == ["sudo", "systemd-run", "--quiet", "--pipe", "--wait", "--collect", "-p"]
    properties = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-p"]
    assert properties == [
        "User=safeguard",
        "Group=safeguard",
        "SupplementaryGroups=audio video",
        "EnvironmentFile=/etc/safeguard/secrets.env",
    ]
    assert argv[-3:] == ["check", "--config", "/etc/safeguard/config.yaml"]
    assert argv[-4] == "/opt/safeguard/venv/bin/safeguard"
    docs = " ".join((ROOT / "docs/device.md").read_text().replace("\\\n", " ").split())
    assert " ".join(command.split()) in docs


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


def test_the_root_start_step_imports_edge_from_the_venv_only(
    staged: tuple[Path, str], tmp_path: Path
) -> None:
    """The unit's privileged ExecStartPre, run by the installed venv's python from a folder
    that holds a package `edge` (as the daemon's writable WorkingDirectory could), imports the
    installed edge, not that one."""
    root, _ = staged
    unit = root / "etc/systemd/system/safeguard.service"
    (line,) = unit_setting(unit, "ExecStartPre")
    argv = shlex.split(line.lstrip("-+@!:"))
    assert argv[0] == "/opt/safeguard/venv/bin/python"
    python = root / argv[0].lstrip("/")
    code, err, imported = run_beside_shadows(str(python), argv[1:], tmp_path)
    assert not imported, "the start step imported code from its working directory"
    assert code == 0, err
    where = subprocess.run(
        [str(python), "-I", "-c", "import edge; print(edge.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert where.stdout.startswith(f"{root}/opt/safeguard/venv/lib/"), where.stdout


def test_the_listener_can_read_its_config(staged: tuple[Path, str]) -> None:
    """The listener runs as a DynamicUser= outside group safeguard: each file its command line
    names is readable by others, or a credential that systemd (root) loads from a file."""
    root, _ = staged
    unit = root / "etc/systemd/system/safeguard-listener.service"
    credentials = dict(item.split(":", 1) for item in unit_setting(unit, "LoadCredential"))
    (start,) = unit_setting(unit, "ExecStart")
    argv = shlex.split(start)
    config = argv[argv.index("--config") + 1]
    if config.startswith("${CREDENTIALS_DIRECTORY}/"):
        source = credentials[config.split("/", 1)[1]]
        assert source == "/etc/safeguard/listener.yaml"
        assert (root / source.lstrip("/")).read_text() == (
            ROOT / "config.listener.yaml"
        ).read_text()
    else:
        assert readable_by_others(root / config.lstrip("/")), f"{config} is not readable"


def test_the_installed_listener_starts(staged: tuple[Path, str]) -> None:
    """`--with-listener` installed the listener's unit but not its packages, so under a real
    systemd the service died at import (no uvicorn) and was restarted every 2 s for ever."""
    root, _ = staged
    exe = root / "opt/safeguard/venv/bin/safeguard-listener"
    result = subprocess.run(
        [str(exe), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--config" in result.stdout


def test_adding_the_listener_later_installs_its_packages(tmp_path: Path) -> None:
    """The venv stamp covered only the source, so a second run with --with-listener found the
    venv "current" and left the listener's packages out."""
    install(tmp_path, "--models-from", str(require_shared(SHARED_MODELS)))
    exe = tmp_path / "opt/safeguard/venv/bin/safeguard-listener"
    before = subprocess.run(
        [str(exe), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert before.returncode != 0  # a device-only venv: no API server
    out = install(tmp_path, "--models-from", str(SHARED_MODELS), "--with-listener")
    assert "is current" not in out
    assert "safeguard[device,listener]" in out
    after = subprocess.run(
        [str(exe), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert after.returncode == 0, after.stderr[-2000:]


def test_an_unedited_previous_default_config_is_upgraded(
    staged: tuple[Path, str], tmp_path: Path
) -> None:
    """A config still equal to the default an earlier install put there takes the new default;
    `config.yaml.dist` is the default of the installed version."""
    root, _ = staged
    newer = tmp_path / "newer"
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name,
                newer / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
            )
        else:
            newer.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, newer / name)
    default = (ROOT / "config.yaml").read_text()
    (newer / "config.yaml").write_text(default + "# a comment only the newer default has\n")
    config = root / "etc/safeguard/config.yaml"
    assert config.read_text() == default  # as the first install left it
    out = install(root, "--models-from", str(SHARED_MODELS), "--with-listener", src=newer)
    assert "upgraded to the new default" in out
    assert config.read_text() == (newer / "config.yaml").read_text()
    assert (root / "etc/safeguard/config.yaml.dist").read_text() == config.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    # and back: this checkout's default replaces the unedited one of the other copy
    install(root, "--models-from", str(SHARED_MODELS), "--with-listener")
    assert config.read_text() == default
    assert (root / "etc/safeguard/config.yaml.dist").read_text() == default


def test_a_missing_camera_model_stops_only_an_install_with_a_camera(
    staged: tuple[Path, str], tmp_path: Path
) -> None:
    """A mirror without the video backbone: an audio-only config installs (with a warning) and
    the service is enabled; a config with a camera stops with an error line."""
    root, _ = staged
    mirror = tmp_path / "audio-only"
    mirror.mkdir()
    for model in SHARED_MODELS.glob("yamnet*"):
        (mirror / model.name).symlink_to(model)
    (root / "var/lib/safeguard/models" / VIDEO_MODEL).unlink()
    args = ("--models-from", str(mirror), "--with-listener")
    out = run_install(root, *args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "safeguard install: warning: model mobilenet_v1_embedding" in out.stderr
    assert "systemctl enable safeguard" in (root / "safeguard-install.plan").read_text()
    assert "enabled and (re)started safeguard" in out.stdout
    config = root / "etc/safeguard/config.yaml"
    default = config.read_text()
    config.write_text(default.replace("  source: none", "  source: /dev/video0"))
    try:
        out = run_install(root, *args)
    finally:
        config.write_text(default)
    assert out.returncode == 1, out.stdout[-3000:]
    assert "safeguard install: error: model mobilenet_v1_embedding" in out.stderr
    assert "systemctl enable" not in (root / "safeguard-install.plan").read_text()


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


def test_a_kept_config_that_no_longer_validates_stops_before_the_restart(
    staged: tuple[Path, str],
) -> None:
    root, _ = staged
    config = root / "etc/safeguard/config.yaml"
    kept = config.read_text()
    config.write_text(kept + "audio_typo: {}\n")
    plan = root / "safeguard-install.plan"
    plan.unlink(missing_ok=True)
    try:
        out = run_install(root, "--models-from", str(SHARED_MODELS), "--with-listener")
    finally:
        config.write_text(kept)
    assert out.returncode == 1, out.stdout[-2000:]
    assert "safeguard install: error: /etc/safeguard/config.yaml does not fit this version" in (
        out.stderr
    )
    assert "audio_typo: unknown key" in out.stderr
    assert "systemctl restart" not in (plan.read_text() if plan.exists() else "")


def test_uninstall_keeps_data_and_purge_removes_it(staged: tuple[Path, str]) -> None:
    root, _ = staged
    out = install(root, "--uninstall")
    assert "kept /etc/safeguard" in out
    assert not (root / "opt/safeguard").exists()
    assert not (root / "etc/systemd/system/safeguard.service").exists()
    assert (root / "etc/safeguard/config.yaml").is_file()
    assert (root / "var/lib/safeguard/models/yamnet.tflite").is_file()
    plan = (root / "safeguard-install.plan").read_text()
    assert "systemctl disable --now safeguard safeguard-listener\n" in plan
    install(root, "--uninstall", "--purge")
    assert not (root / "etc/safeguard").exists()
    assert not (root / "var/lib/safeguard").exists()
    assert "userdel safeguard" in (root / "safeguard-install.plan").read_text()


def test_uninstall_stops_only_the_units_that_are_installed(tmp_path: Path) -> None:
    """Without the listener, `systemctl disable --now` names only safeguard (a unit that does
    not exist makes it fail, which stopped the uninstall under `set -e`)."""
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / "safeguard.service").write_text("[Service]\nExecStart=/bin/true\n")
    install(tmp_path, "--uninstall")
    plan = (tmp_path / "safeguard-install.plan").read_text().splitlines()
    assert [line for line in plan if "systemctl" in line] == ["systemctl disable --now safeguard"]
    assert not (units / "safeguard.service").exists()


def test_purge_alone_uninstalls_and_removes_the_listeners_data(tmp_path: Path) -> None:
    """`--purge` implies `--uninstall` (it used to run a full install), and it also removes the
    listener's database, which DynamicUser= keeps in /var/lib/private."""
    private = tmp_path / "var/lib/private/safeguard-listener"
    private.mkdir(parents=True)
    (private / "alerts.db").write_bytes(b"alerts")
    (tmp_path / "var/lib/safeguard-listener").symlink_to("private/safeguard-listener")
    (tmp_path / "etc/safeguard").mkdir(parents=True)
    out = install(tmp_path, "--purge")
    assert "purged /etc/safeguard" in out
    assert "virtual environment" not in out
    assert "models:" not in out
    assert not (tmp_path / "etc/safeguard").exists()
    assert not private.exists()
    assert not (tmp_path / "var/lib/safeguard-listener").is_symlink()


def shims(folder: Path, **programs: str) -> dict[str, str]:
    """An environment whose PATH puts these shell scripts (name=body) first."""
    folder.mkdir()
    for name, body in programs.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


@pytest.mark.parametrize(
    ("programs", "message"),
    [
        ({"uname": "echo armv7l"}, "32-bit ARM (armv7l) is not supported"),
        (  # a Python 3.8 (JetPack 5, Ubuntu 20.04): the real one with an older version_info
            {"python3": f'exec {sys.executable} -c "import sys; sys.version_info = (3, 8)\n$2"'},
            "Python 3.8 is too old: Safeguard needs Python 3.10 or newer",
        ),
    ],
    ids=["armv7l", "python3.8"],
)
def test_an_unsupported_system_is_refused_up_front(
    tmp_path: Path, programs: dict[str, str], message: str
) -> None:
    env = shims(tmp_path / "bin", **programs)
    out = run_install(tmp_path / "stage", "--models-from", str(SHARED_MODELS), env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"safeguard install: error: {message}" in out.stderr
    assert "apt-get" not in (tmp_path / "stage/safeguard-install.plan").read_text()
    assert not (tmp_path / "stage/opt").exists()


def test_a_missing_models_folder_is_an_install_error(tmp_path: Path) -> None:
    out = run_install(tmp_path / "stage", "--models-from", str(tmp_path / "nowhere"))
    assert out.returncode == 1
    missing = tmp_path / "nowhere"
    assert out.stderr == f"safeguard install: error: --models-from {missing}: no such folder\n"


@pytest.mark.parametrize(
    "script",
    ["install.sh", "scripts/pi-check.sh", "scripts/systemd-check.sh", "scripts/root-lib.sh"],
)
def test_shellcheck_clean(script: str) -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.fail("shellcheck is not installed: run `make deps`", pytrace=False)
    out = subprocess.run(  # -x: follow the `source` of scripts/root-lib.sh (from ROOT)
        [exe, "-x", script], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )
    assert out.returncode == 0, out.stdout
