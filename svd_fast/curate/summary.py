"""Counts per stage (summary.json) and score histograms with the filter thresholds (summary.png)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter

import numpy as np

from .filters import Rule

HISTOGRAMS = [("motion", "motion score (Farneback, px)"), ("text_area", "text area (fraction of frame)"),
              ("aesthetic", "aesthetic score"), ("clip_score", "CLIP text-image similarity"),
              ("duration", "clip duration (s)")]
SCORED = ("motion", "text_area", "aesthetic", "clip_score")
# Set before scoring (the span never reaches the filters): shots too short to keep, undecodable
# clips, transition frames ('transition_dissolve', ...) and frames skipped to start on a keyframe.
EARLY_REASONS = ("too_short", "decode_error", "transition", "keyframe_snap")


def early_reason(reason: str) -> str:
    """The EARLY_REASONS entry `reason` starts with, or ''."""
    return next((early for early in EARLY_REASONS if reason.startswith(early)), "")


class StageCounter:
    """Accumulates per-stage counts while the manifest streams past."""

    def __init__(self, num_sources: int):
        self.sources = {"found": num_sources, "unreadable": 0, "with_clips": 0}
        self.clips = 0
        self.early = Counter()  # spans dropped before filtering, by EARLY_REASONS entry
        self.frames_dropped = Counter()  # their frames
        self.scored = Counter()
        self.captioned = 0
        self.filters = Counter()
        self.kept = 0

    def add_error(self) -> None:
        self.sources["unreadable"] += 1

    def add_source(self, rows: list[dict]) -> None:
        self.sources["with_clips"] += 1
        for row in rows:
            self.clips += 1
            early = early_reason(row["reason"])
            if early:
                self.early[early] += 1
                self.frames_dropped[early] += row["end_frame"] - row["start_frame"]
                continue
            self.scored.update(name for name in SCORED if not math.isnan(row[name]))
            self.captioned += bool(row["caption"])
            self.filters.update(reason for reason in row["reason"].split(";") if reason)
            self.kept += bool(row["kept"])

    def as_dict(self, shards: dict) -> dict:
        return {"sources": self.sources,
                "cuts": {"clips": self.clips, "too_short": self.early["too_short"],
                         "decode_error": self.early["decode_error"], "transitions": self.early["transition"],
                         "keyframe_snap": self.early["keyframe_snap"],
                         "frames_dropped": {k: int(self.frames_dropped[k]) for k in EARLY_REASONS}},
                "scored": {name: self.scored[name] for name in SCORED},
                "captioned": self.captioned,
                "filters": dict(sorted(self.filters.items())),
                "kept": self.kept,
                "shards": shards}


def plot_histograms(scores: dict[str, np.ndarray], rules: list[Rule], path: str) -> None:
    """One histogram per score over the candidate clips, thresholds as dashed red lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(HISTOGRAMS), figsize=(4 * len(HISTOGRAMS), 3.2))
    for axis, (column, title) in zip(axes, HISTOGRAMS):
        values = np.asarray(scores.get(column, []), dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size:
            axis.hist(values, bins=min(50, max(5, values.size // 4)), color="#4878a8")
        else:
            axis.text(0.5, 0.5, "stage off", ha="center", va="center", transform=axis.transAxes)
        for rule in rules:
            if rule.column == column:
                axis.axvline(rule.threshold, color="#c03030", linestyle="--", label=rule.reason)
                axis.legend(fontsize=7)
        axis.set_title(title, fontsize=9)
        axis.set_ylabel("clips")
    figure.tight_layout()
    partial = path + ".partial.png"
    figure.savefig(partial, dpi=90)
    plt.close(figure)
    os.replace(partial, path)


# What a switched-off stage leaves out, for the summary.
STAGE_OFF_EFFECT = {
    "cuts": "each source is one clip",
    "motion": "no motion score, no low_motion filter",
    "text": "no text area, no text filters",
    "clip": "no CLIP aesthetic or text-image scores, no low_aesthetic / low_clip_score filters",
    "captions": "no captions",
    "shards": "no webdataset shards written",
}


def stage_states(config) -> dict[str, str]:
    """{stage: 'on' or 'off: what is missing'} for the summary and the closing log line."""
    return {name: "on" if getattr(config, name).enabled else f"off: {STAGE_OFF_EFFECT[name]}"
            for name in STAGE_OFF_EFFECT}


def write_summary(out_dir: str, counts: dict, rules: list[Rule], scores: dict[str, np.ndarray],
                  stages: dict[str, str] | None = None) -> dict:
    summary = {"counts": counts, "thresholds": [dataclasses.asdict(rule) for rule in rules]}
    if stages is not None:
        summary["stages"] = stages
    partial = os.path.join(out_dir, "summary.json.partial")
    with open(partial, "w") as handle:
        json.dump(summary, handle, indent=2)
    os.replace(partial, os.path.join(out_dir, "summary.json"))
    plot_histograms(scores, rules, os.path.join(out_dir, "summary.png"))
    return summary
