"""Threat categories: YAMNet class groups, veto classes and optional trained heads.

A category's rule score is the highest score among its YAMNet classes in a window. A trained
head (`edge.heads`) scores the window's 1024-d embedding; `combine` says how the rule and the
head make the category's score. A veto class (a context that produces look-alikes: fireworks
for gunshots, dishes for glass, music for screams) scoring at least `veto_ratio` times that
score silences the window. The score goes to the category's `Smoother`.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.errors import ConfigError
from edge.heads import HEADS_DIR, Head, load_head, patch_features_many, patch_features_of
from edge.smoothing import SmoothingConfig
from edge.yamnet import Window

log = logging.getLogger(__name__)

Severity = Literal["info", "warning", "critical"]
Combine = Literal["rule", "head", "max", "mean"]


class CategoryConfig(BaseModel):
    """One kind of threat: which YAMNet classes make it, what suppresses it, how it smooths."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Detect this category at all.")
    severity: Severity = Field(default="warning", description="Severity of this category's alerts.")
    classes: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="YAMNet class display names forming the group (as `safeguard listen` shows "
        "them); the rule score is the highest of their scores.",
    )
    veto: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Context classes that produce look-alikes; a window where one of them scores "
        "at least `veto_ratio` times the category's score counts as 0.",
    )
    veto_ratio: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description="How strong a veto class must be, relative to the category's score.",
    )
    head: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="A trained head file (.npz), relative to models_tflite/heads/ unless absolute.",
    )
    combine: Combine = Field(
        default="rule",
        description="How the score is made: `rule` (class group only), `head` (the trained head "
        "only), `max` or `mean` of the two; the veto applies to all of them.",
    )
    smoothing: SmoothingConfig = Field(
        default_factory=lambda: SmoothingConfig.model_validate({}),
        description="How window scores become events.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> CategoryConfig:
        if self.combine != "rule" and self.head is None:
            raise ValueError(f"combine: {self.combine!r} needs a `head` file")
        if self.combine != "head" and not self.classes:
            raise ValueError(f"combine: {self.combine!r} needs at least one class in `classes`")
        return self


def _smoothing(**fields: float | None) -> SmoothingConfig:
    return SmoothingConfig.model_validate({"hold_s": 1.0, "refractory_s": 5.0, **fields})


# Defaults measured on the dev data (bench/RESULTS.md, `## Audio quality`): the thresholds
# are the cross-validated operating points that flag at most 0.5% of the `none` clips, for
# the default `yamnet_spectra_in` model at a 0.25 s hop (the waveform `yamnet` measured the
# same); vetoes were kept where they helped there.
# Glass breaking's head also has a part on the window's log-mel statistics
# (`edge.frontend.patch_stats`, averaged with the embedding part) and was trained on copies
# at random gains (a distant break): at `on` 0.7 with a one-window start at 0.85 (a break
# shorter than two hops) it flags none of the `none` clips for 95.5% clip recall and 9 of
# the 12 stream glass breaks (before the gain copies, with 0.9: 0.3%, 93.6% and 7 of 12;
# the embedding alone: 83% at 1.7% flagged with `on` 0.94, 5 of 12).
# Gunshot's head is a softmax over the training clips' fine labels (its share of `gunshot`,
# `converter.train_head.DEFAULT_BY_LABEL`): the same figures at `on` 0.53, fewer `none` clips
# and no stream background flagged below it.
DEFAULT_CATEGORIES: dict[str, CategoryConfig] = {
    "scream": CategoryConfig(
        severity="critical",
        classes=["Screaming", "Yell", "Shout", "Children shouting"],
        veto=["Music", "Television", "Radio", "Vocal music", "Baby cry, infant cry"],
        veto_ratio=0.7,
        head="scream.npz",
        combine="mean",
        smoothing=_smoothing(on=0.52, off=0.4, fast=0.85, k=2, n=3),
    ),
    "gunshot": CategoryConfig(
        severity="critical",
        classes=["Gunshot, gunfire", "Machine gun", "Cap gun", "Artillery fire"],
        veto=["Fireworks", "Firecracker"],
        veto_ratio=1.5,
        head="gunshot.npz",
        combine="mean",
        smoothing=_smoothing(on=0.53, off=0.4, fast=0.8, k=2, n=3),
    ),
    "glass_break": CategoryConfig(
        severity="warning",
        classes=["Shatter", "Glass", "Breaking", "Smash, crash"],
        veto=["Dishes, pots, and pans", "Cutlery, silverware", "Door", "Slam"],
        veto_ratio=1.0,
        head="glass_break.npz",
        combine="head",
        smoothing=_smoothing(on=0.7, off=0.6, fast=0.85, k=2, n=3),
    ),
}


@dataclass(frozen=True)
class _Compiled:
    name: str
    classes: npt.NDArray[np.intp]
    veto: npt.NDArray[np.intp]
    veto_ratio: float
    head: Head | None
    combine: Combine


def _class_indices(
    names: Sequence[str], index: Mapping[str, int], path: str
) -> npt.NDArray[np.intp]:
    found = []
    for i, name in enumerate(names):
        if name not in index:
            close = difflib.get_close_matches(name, list(index), n=1, cutoff=0.6)
            if not close:
                folded = {k.casefold(): k for k in index}
                close = [folded[name.casefold()]] if name.casefold() in folded else []
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{path}[{i}]: {name!r} is not a YAMNet class{hint}")
        found.append(index[name])
    return np.array(found, dtype=np.intp)


def _check_variant(head: Head, variant: str | None, key: str) -> None:
    """Warns when a head was trained on the other YAMNet variant's embeddings: they are
    close enough to work (bench/RESULTS.md) but a matching head scores best."""
    trained = head.metadata.get("variant")
    if variant is not None and trained is not None and trained != variant:
        log.warning(
            "%s was trained on %s embeddings but audio.model is %s; retrain it with "
            "`safeguard-convert train-head --variant %s` for the best scores",
            key,
            trained,
            variant,
            variant,
        )


class CategoryScorer:
    """Scores every enabled category on one window; built once, then cheap per window."""

    def __init__(
        self,
        categories: Mapping[str, CategoryConfig],
        labels: Sequence[str],
        heads_dir: Path = HEADS_DIR,
        path: str = "detection.categories",
        variant: str | None = None,
    ) -> None:
        self.labels = list(labels)
        index = {name: i for i, name in enumerate(self.labels)}
        self._compiled: list[_Compiled] = []
        for name, cfg in categories.items():
            if not cfg.enabled:
                continue
            key = f"{path}.{name}"
            head = None
            if cfg.head is not None and cfg.combine != "rule":
                head = load_head(heads_dir / cfg.head, len(self.labels), f"{key}.head")
                _check_variant(head, variant, f"{key}.head")
            self._compiled.append(
                _Compiled(
                    name,
                    _class_indices(cfg.classes, index, f"{key}.classes"),
                    _class_indices(cfg.veto, index, f"{key}.veto"),
                    cfg.veto_ratio,
                    head,
                    cfg.combine,
                )
            )

    @property
    def categories(self) -> list[str]:
        return [c.name for c in self._compiled]

    @property
    def patch_features(self) -> set[str]:
        """The log-mel patch features the heads need (windows must then carry their patch)."""
        return {c.head.patch_features for c in self._compiled if c.head and c.head.patch_features}

    def score(self, window: Window) -> dict[str, float]:
        """0..1 per enabled category; silent windows score 0."""
        if window.silent:
            return {c.name: 0.0 for c in self._compiled}
        stats: dict[str, npt.NDArray[np.float32]] = {}
        if window.patch is not None:  # computed once per window, shared by the heads
            stats = {name: patch_features_of(name, window.patch) for name in self.patch_features}
        return {c.name: self._score(c, window, stats) for c in self._compiled}

    def score_many(self, windows: Sequence[Window]) -> list[dict[str, float]]:
        """`score` of each window, computed for all of them at once (`safeguard analyze`
        classifies windows in blocks): the same arithmetic as `score` in matrix form, equal
        to it within float32 rounding (tested)."""
        heard = [i for i, w in enumerate(windows) if not w.silent]
        out = [dict.fromkeys(self.categories, 0.0) for _ in windows]
        if not heard:
            return out
        if self.patch_features and any(windows[i].patch is None for i in heard):
            return [self.score(w) for w in windows]  # a head reads patches some lack
        scores = np.stack([windows[i].scores for i in heard])
        embeddings = np.stack([windows[i].embedding for i in heard])
        stats: dict[str, npt.NDArray[np.float32]] = {}
        if self.patch_features:
            patches = np.stack([windows[i].patch for i in heard])  # type: ignore[misc]
            stats = {name: patch_features_many(name, patches) for name in self.patch_features}
        for c in self._compiled:
            rule = scores[:, c.classes].max(axis=1) if c.classes.size else np.zeros(len(heard))
            value = rule.astype(np.float64)
            if c.head is not None and c.combine != "rule":
                extra = stats.get(c.head.patch_features) if c.head.patch_features else None
                learned = c.head.apply_many(embeddings, scores, extra).astype(np.float64)
                if c.combine == "head":
                    value = learned
                elif c.combine == "max":
                    value = np.maximum(value, learned)
                else:
                    value = 0.5 * (value + learned)
            if c.veto.size:
                vetoed = scores[:, c.veto].max(axis=1) >= c.veto_ratio * np.maximum(value, 1e-6)
                value = np.where(vetoed, 0.0, value)
            for i, v in zip(heard, np.clip(value, 0.0, 1.0).tolist(), strict=True):
                out[i][c.name] = v
        return out

    @staticmethod
    def _score(c: _Compiled, window: Window, stats: Mapping[str, npt.NDArray[np.float32]]) -> float:
        scores = window.scores
        rule = float(scores[c.classes].max()) if c.classes.size else 0.0
        if c.head is None or c.combine == "rule":
            value = rule
        else:
            extra = stats.get(c.head.patch_features) if c.head.patch_features else None
            learned = c.head.apply(window.embedding, scores, extra)
            if c.combine == "head":
                value = learned
            elif c.combine == "max":
                value = max(rule, learned)
            else:
                value = 0.5 * (rule + learned)
        if c.veto.size and float(scores[c.veto].max()) >= c.veto_ratio * max(value, 1e-6):
            return 0.0
        return min(1.0, max(0.0, value))

    def evidence(self, window: Window, top: int = 3) -> dict[str, float]:
        """The `top` YAMNet classes of the window with their scores, highest first."""
        if top <= 0:
            return {}
        best = np.argpartition(window.scores, -top)[-top:]
        best = best[np.argsort(window.scores[best])[::-1]]
        return {self.labels[i]: round(float(window.scores[i]), 4) for i in best}
