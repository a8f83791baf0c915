"""The model manifest, fetching (official URL or mirror folder) and sha256 verification."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from edge.errors import ModelError
from models_tflite import MANIFEST

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelSpec:
    name: str
    file: str
    url: str
    sha256: str
    size: int
    inputs: str
    outputs: str
    licence: str


def load_manifest(path: Path = MANIFEST) -> dict[str, ModelSpec]:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"cannot read the model manifest {path}: {exc}") from None
    return {name: ModelSpec(name=name, **fields) for name, fields in raw["models"].items()}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify(spec: ModelSpec, directory: Path) -> Path:
    """The verified path of `spec` in `directory`, or a ModelError saying what is wrong."""
    path = directory / spec.file
    hint = f"run `safeguard models fetch` (or `--from DIR` offline) to get {spec.file}"
    if not path.is_file():
        raise ModelError(f"model {spec.name} is missing: {path} does not exist; {hint}")
    size = path.stat().st_size
    if size != spec.size:
        raise ModelError(
            f"model {spec.name} at {path} is {size} bytes, expected {spec.size} "
            f"(truncated or wrong file); {hint}"
        )
    try:
        digest = sha256_of(path)
    except OSError as exc:
        raise ModelError(
            f"model {spec.name}: cannot read {path} ({exc.strerror}); the user that runs "
            "safeguard needs read access to it"
        ) from None
    if digest != spec.sha256:
        raise ModelError(
            f"model {spec.name} at {path} has sha256 {digest}, expected {spec.sha256}; {hint}"
        )
    return path


def _find_in_mirror(spec: ModelSpec, mirror: Path) -> Path | None:
    for candidate in (mirror / spec.file, mirror / spec.url.rsplit("/", 1)[-1]):
        if candidate.is_file() and candidate.stat().st_size == spec.size:
            return candidate
    for candidate in sorted(mirror.rglob("*")):
        sized = candidate.is_file() and candidate.stat().st_size == spec.size
        if sized and sha256_of(candidate) == spec.sha256:
            return candidate
    return None


def _download(url: str, target: Path) -> None:
    if not url.startswith("https://"):
        raise ModelError(f"refusing to download over a non-https URL: {url}")
    with urllib.request.urlopen(url, timeout=60) as response, target.open("wb") as out:  # noqa: S310
        shutil.copyfileobj(response, out, CHUNK)


def prepare(directory: Path, mirror: Path | None) -> None:
    """Make the model folder; ModelError when it cannot be made or the mirror is missing."""
    if mirror is not None and not mirror.is_dir():
        raise ModelError(f"the mirror folder {mirror} does not exist or is not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot make the model folder {directory}: {exc.strerror}") from None
    if not os.access(directory, os.W_OK):
        raise ModelError(f"cannot write to the model folder {directory}")


def fetch(spec: ModelSpec, directory: Path, mirror: Path | None = None) -> tuple[Path, str]:
    """Put a verified copy of `spec` in `directory`; returns the path and what was done."""
    prepare(directory, mirror)
    try:
        return verify(spec, directory), "present"
    except ModelError:
        pass
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.file}.", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if mirror is not None:
            source = _find_in_mirror(spec, mirror)
            if source is None:
                raise ModelError(
                    f"model {spec.name}: no file with its sha256 in the mirror {mirror}"
                )
            shutil.copyfile(source, tmp)
            how = f"copied from {source}"
        else:
            log.info("downloading %s from %s", spec.name, spec.url)
            try:
                _download(spec.url, tmp)
            except OSError as exc:
                raise ModelError(
                    f"model {spec.name}: download from {spec.url} failed: {exc}"
                ) from None
            how = f"downloaded from {spec.url}"
        digest = sha256_of(tmp)
        if digest != spec.sha256:
            raise ModelError(f"model {spec.name}: got sha256 {digest}, expected {spec.sha256}")
        tmp.chmod(0o644)  # mkstemp's 0600 would hide the model from the service's user
        os.replace(tmp, directory / spec.file)
    finally:
        tmp.unlink(missing_ok=True)
    return directory / spec.file, how
