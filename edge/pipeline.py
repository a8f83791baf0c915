"""Building the audio pipeline from the config: verified models, the YAMNet wrapper, the
detector. Shared by `run`, `check`, `analyze` and `listen`."""

from __future__ import annotations

import logging

from edge.config import Config
from edge.detector import Detector
from edge.frontend import HOP
from edge.models import load_manifest, verify
from edge.yamnet import Yamnet, labels_from_class_map, labels_from_model

log = logging.getLogger(__name__)


def load_yamnet(config: Config) -> Yamnet:
    """The configured YAMNet variant, after checking its sha256 (ModelError if wrong)."""
    manifest = load_manifest()
    variant = config.audio.model
    path = verify(manifest[variant], config.models_dir)
    if variant == "yamnet":
        labels = labels_from_model(path)
    else:
        labels = labels_from_class_map(verify(manifest["yamnet_class_map"], config.models_dir))
    model = Yamnet(path, variant, labels, threads=config.audio.threads)
    log.info("model %s loaded from %s (%s)", variant, path, model.runtime)
    return model


def hop_samples(config: Config) -> int:
    return round(config.audio.hop_s * 100) * HOP


def build_detector(
    config: Config, model: Yamnet | None = None, origin_wall: float = 0.0
) -> Detector:
    return Detector(model or load_yamnet(config), config.detection.categories, origin_wall)
