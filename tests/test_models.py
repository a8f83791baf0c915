"""Model fetching from a mirror and sha256 verification with clear errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.errors import ModelError
from edge.models import fetch, load_manifest, verify
from tests.helpers import SHARED_MODELS, require_shared


def test_manifest_lists_every_model_with_url_and_sha256() -> None:
    manifest = load_manifest()
    assert {"yamnet", "yamnet_spectra_in", "yamnet_class_map"} <= set(manifest)
    for spec in manifest.values():
        assert spec.url.startswith("https://")
        assert len(spec.sha256) == 64
        assert spec.licence


def test_fetch_from_mirror_then_verify(tmp_path: Path) -> None:
    mirror = require_shared(SHARED_MODELS)
    spec = load_manifest()["yamnet_class_map"]
    path, how = fetch(spec, tmp_path, mirror)
    assert "copied from" in how
    assert verify(spec, tmp_path) == path
    assert fetch(spec, tmp_path, mirror)[1] == "present"


def test_fetch_finds_a_mirror_file_by_its_hash(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(require_shared(SHARED_MODELS) / "yamnet_class_map.csv", mirror / "renamed.csv")
    spec = load_manifest()["yamnet_class_map"]
    path, _ = fetch(spec, tmp_path / "models", mirror)
    assert path.name == "yamnet_class_map.csv"


def test_missing_truncated_and_wrong_files_fail_clearly(tmp_path: Path) -> None:
    spec = load_manifest()["yamnet_class_map"]
    with pytest.raises(ModelError, match=r"missing.*safeguard models fetch"):
        verify(spec, tmp_path)
    source = require_shared(SHARED_MODELS) / "yamnet_class_map.csv"
    (tmp_path / spec.file).write_bytes(source.read_bytes()[:1000])
    with pytest.raises(ModelError, match="truncated"):
        verify(spec, tmp_path)
    data = bytearray(source.read_bytes())
    data[100] ^= 0xFF
    (tmp_path / spec.file).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        verify(spec, tmp_path)


def test_mirror_without_the_file(tmp_path: Path) -> None:
    spec = load_manifest()["yamnet"]
    with pytest.raises(ModelError, match="no file with its sha256 in the mirror"):
        fetch(spec, tmp_path / "models", tmp_path)
    assert not list((tmp_path / "models").iterdir())  # no partial file left behind


def test_fetched_models_are_readable_by_other_users(tmp_path: Path) -> None:
    """The daemon's service user reads what `models fetch` wrote as another user."""
    spec = load_manifest()["yamnet_class_map"]
    path, _ = fetch(spec, tmp_path, require_shared(SHARED_MODELS))
    assert path.stat().st_mode & 0o777 == 0o644


def test_model_folder_and_mirror_problems_are_one_line(tmp_path: Path) -> None:
    spec = load_manifest()["yamnet_class_map"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ModelError, match=r"cannot make the model folder .*file"):
        fetch(spec, a_file, require_shared(SHARED_MODELS))
    with pytest.raises(ModelError, match=r"the mirror folder .*nowhere does not exist"):
        fetch(spec, tmp_path / "models", tmp_path / "nowhere")


def test_an_unreadable_model_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    spec = load_manifest()["yamnet_class_map"]
    path, _ = fetch(spec, tmp_path, require_shared(SHARED_MODELS))
    path.chmod(0o000)
    # root reads anything: drop the capabilities that let it, as a service user has none
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    code = "from edge.cli import main; raise SystemExit(main())"
    args = ["models", "verify", "--dir", str(tmp_path)]
    result = subprocess.run(
        [*(prefix if os.geteuid() == 0 else []), sys.executable, "-c", code, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"model yamnet_class_map: cannot read {path} (Permission denied)" in result.stderr
    assert "Traceback" not in result.stderr
