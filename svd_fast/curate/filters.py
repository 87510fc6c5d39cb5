"""Stage 7: the paper's filters, with thresholds computed over the whole data set.

Each score is judged on its own (as in the paper's ablations): a percentile of that score over
all candidate clips (clips not already dropped as too short or undecodable) gives its
threshold, unless an absolute threshold is configured. The text area has both a percentile and
the absolute 7 % cap of LVD-F. A clip failing several filters lists every reason, ';'-joined.
Scores that are NaN (stage switched off) are not filtered. Ties keep a clip: when most clips
show no text at all, the text percentile is 0 and any detected text drops a clip.

Only the score arrays are needed to build the rules, so the manifest itself can be streamed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import FilterConfig


@dataclass(frozen=True)
class Rule:
    reason: str  # recorded in the manifest when a clip fails
    column: str
    threshold: float
    keep_above: bool  # True: keep score >= threshold; False: keep score <= threshold

    def fails(self, value: float) -> bool:
        if value is None or math.isnan(value):
            return False
        return value < self.threshold if self.keep_above else value > self.threshold


def build_rules(scores: dict[str, np.ndarray], config: FilterConfig) -> list[Rule]:
    """Thresholds from the candidate clips' scores ({column: values}, NaN where not scored)."""
    def finite(column: str) -> np.ndarray:
        values = np.asarray(scores.get(column, []), dtype=np.float64)
        return values[np.isfinite(values)]

    rules = []
    for column, reason, drop, absolute in [
        ("motion", "low_motion", config.motion_drop_lowest, config.min_motion),
        ("aesthetic", "low_aesthetic", config.aesthetic_drop_lowest, config.min_aesthetic),
        ("clip_score", "low_clip_score", config.clip_score_drop_lowest, config.min_clip_score),
    ]:
        values = finite(column)
        if not values.size:
            continue
        if absolute is not None:
            rules.append(Rule(reason, column, float(absolute), keep_above=True))
        elif drop > 0:
            rules.append(Rule(reason, column, float(np.quantile(values, drop)), keep_above=True))
    text = finite("text_area")
    if text.size and config.text_area_drop_highest > 0:
        rules.append(Rule("much_text", "text_area", float(np.quantile(text, 1 - config.text_area_drop_highest)), False))
    if text.size:
        rules.append(Rule("text_over_max", "text_area", float(config.max_text_area), False))
    return rules


def final_reason(row: dict, rules: list[Rule]) -> str:
    """'' when the clip is kept; its earlier reason (too_short, decode_error) or the failed filters."""
    if row["reason"]:
        return row["reason"]
    return ";".join(rule.reason for rule in rules if rule.fails(row[rule.column]))
