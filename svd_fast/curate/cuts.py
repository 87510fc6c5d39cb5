"""Stage 2: cascaded cut detection and clipping that accounts for every frame.

The paper cuts its videos with a cascade of detectors at several frame rates, so that hard cuts
(one large jump between neighbouring frames) and gradual transitions (dissolves, fades through
black, wipes: small changes per frame, large only between frames far apart) are both found.
Here every level reads the same features, computed in one decode pass at low resolution:

- level "cut" (every frame): the change between neighbouring frames (colour histogram and grey
  thumbnail) must stand out `cut_ratio` times above the changes around it. Camera motion, blur
  and flicker raise the changes around a frame as much as the frame itself, so they do not cut;
  a flash (one odd frame whose neighbours match each other) does not cut either.
- levels "gradual" (e.g. 4 fps and 1 fps): frames `step` apart are compared; where they differ
  much more than usual, the frames in between are tested as a *mixture* of the two shots: each
  is fitted as a*A + b*B (dissolves and fades, black being zero) or pixel by pixel as A or B
  (wipes). A camera pan or a moving object is neither, so it is rejected. The fitted weights
  ramp from A to B; fitting a ramp to them gives the transition's first and last frame.

A transition is (start, end): `start` its first frame, `end` the first frame of the new shot
(== start for a hard cut). Every frame of the video ends up in exactly one span: a clip, a
transition (reason 'transition_<kind>'), a shot shorter than the minimum ('too_short') or the
frames skipped to start a clip on a keyframe ('keyframe_snap'). Nothing disappears silently.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

from .config import CutConfig
from .probe import VideoInfo
from .video import frame_to_rgb, iter_decoded

GREY_SIDE = 48  # grey thumbnails for the cut change and the mixture tests
HIST_BINS = (8, 4, 4)  # hue, saturation, value
DARK = 0.06  # mean grey level (0..1) below which a frame counts as black
KINDS = ("cut", "dissolve", "fade", "wipe")
NEIGHBOUR_RATIO = 3.0  # a hard cut's change over its neighbours' (measured on the labelled cuts: 6.1x and more)


@dataclass(frozen=True)
class Transition:
    start: int  # first frame of the transition
    end: int  # first frame of the new shot (== start for a hard cut)
    kind: str = "cut"  # cut, dissolve, fade (through or from/to black) or wipe
    level: str = ""  # the cascade level that found it

    @property
    def frames(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ClipSpan:
    start: int
    end: int  # exclusive
    reason: str = ""  # "" when the clip goes on to scoring, else why these frames were dropped here


@dataclass
class Features:
    """Per-frame features of one video, all that detection keeps (about 2.8 kB a frame)."""

    hist: np.ndarray  # (N, 128) float32, HSV histogram summing to 1
    grey: np.ndarray  # (N, 48, 48) uint8
    changes: dict = field(default_factory=dict)  # step -> (N,) change between frame i-step and i

    def __len__(self) -> int:
        return len(self.hist)

    def change(self, step: int) -> np.ndarray:
        """c[i] = change between frames i-step and i (0 for i < step): the larger of the histogram
        distance and the mean absolute grey difference, both in [0, 1]."""
        if step not in self.changes:
            out = np.zeros(len(self), np.float32)
            if len(self) > step:
                hist = 0.5 * np.abs(self.hist[step:] - self.hist[:-step]).sum(1)
                grey = np.abs(self.grey[step:].astype(np.int16) - self.grey[:-step]).mean((1, 2)) / 255.0
                out[step:] = np.maximum(hist, grey)
            self.changes[step] = out
        return self.changes[step]


def frame_features(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, list(HIST_BINS), [0, 180, 0, 256, 0, 256]).ravel()
    grey = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (GREY_SIDE, GREY_SIDE), interpolation=cv2.INTER_AREA)
    return hist / max(1.0, float(hist.sum())), grey


def compute_features(frames: Iterable[np.ndarray]) -> Features:
    hists, greys = [], []
    for rgb in frames:
        hist, grey = frame_features(rgb)
        hists.append(hist)
        greys.append(grey)
    if not hists:
        return Features(np.zeros((0, int(np.prod(HIST_BINS))), np.float32), np.zeros((0, GREY_SIDE, GREY_SIDE), np.uint8))
    return Features(np.stack(hists).astype(np.float32), np.stack(greys))


# --- level "cut" ------------------------------------------------------------------------------

def hard_cuts(features: Features, fps: float, ratio: float, min_change: float) -> list[Transition]:
    """Frames whose change from the previous frame stands out from the changes around them."""
    change = features.change(1).copy()
    n = len(change)
    # Next to a black frame only the grey change counts: the colour histogram of a nearly black
    # frame jumps from one dim bin to another while the picture barely changes (mid-fade).
    level = features.grey.reshape(n, -1).mean(1) / 255.0 if n else np.zeros(0)
    grey_change = np.abs(np.diff(features.grey.astype(np.int16), axis=0)).mean((1, 2)) / 255.0 if n > 1 else np.zeros(0)
    dim = np.minimum(level[1:], level[:-1]) < DARK if n > 1 else np.zeros(0, bool)
    change[1:][dim] = grey_change[dim]
    half = max(3, int(round(fps)))  # one second each side sets the local level of change
    cuts = []
    for i in range(1, n):
        if change[i] < min_change:
            continue
        around = np.concatenate([change[max(1, i - half): i - 1], change[i + 2: i + 2 + half]])
        level = float(np.percentile(around, 90)) if around.size else 0.0
        if change[i] < ratio * max(level, min_change / ratio):
            continue
        # A cut is one jump: its neighbours change far less. Inside a fade every frame jumps
        # by about as much (the histogram of a dimming picture moves bin by bin).
        neighbours = max(change[i - 1], change[i + 1] if i + 1 < n else 0.0)
        if change[i] < NEIGHBOUR_RATIO * neighbours:
            continue
        if _is_flash(features, i):
            continue
        cuts.append(Transition(i, i, "cut", "cut"))
    return cuts


def _is_flash(features: Features, i: int) -> bool:
    """Frame i is one odd frame (a flash, a glitch) when its neighbours match each other closely."""
    if i + 1 >= len(features) or i < 1:
        return False
    across = 0.5 * np.abs(features.hist[i + 1] - features.hist[i - 1]).sum()
    return across < 0.25 * features.change(1)[i] and features.change(1)[i + 1] > 0.5 * features.change(1)[i]


# --- levels "gradual" -------------------------------------------------------------------------

def _falling_ramp_fit(y: np.ndarray) -> tuple[int, int, float]:
    """(s, e, rms) of the ramp that is 1 before s, falls linearly to 0 at e and stays 0, closest
    to y in least squares; s == e is a step."""
    n = len(y)
    t = np.arange(n)
    best = (0, 0, np.inf)
    for s in range(n + 1):
        ends = np.arange(s, n + 1)[:, None]
        ramp = np.where(t[None] < s, 1.0, np.clip(1.0 - (t[None] - s + 1) / (ends - s + 1), 0.0, 1.0))
        cost = ((ramp - y[None]) ** 2).mean(1)
        k = int(np.argmin(cost))
        if cost[k] < best[2]:
            best = (s, int(ends[k, 0]), float(cost[k]))
    return best[0], best[1], float(np.sqrt(best[2]))


def _mixture_weights(frames: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares weights (wa, wb) of frames ~ wa*a + wb*b and the relative residual, per frame.

    A black anchor is zero and carries no weight: its column is dropped.
    """
    use = [float(np.abs(v).mean()) > DARK for v in (a, b)]
    weights = np.zeros((2, len(frames)))
    cols = [v for v, u in zip((a, b), use) if u]
    if cols:
        matrix = np.stack(cols, 1)
        solution, *_ = np.linalg.lstsq(matrix, frames.T, rcond=None)
        weights[np.flatnonzero(use)] = solution
        fitted = (matrix @ solution).T
    else:
        fitted = np.zeros_like(frames)
    scale = max(float(np.abs(a - b).mean()), 1e-3)
    residual = np.abs(frames - fitted).mean(1) / scale
    return weights[0], weights[1], residual


def _wipe_residual(frames: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per frame: how far pixels are from both A and B (a wipe shows each pixel from one of them)."""
    scale = max(float(np.abs(a - b).mean()), 1e-3)
    return np.minimum(np.abs(frames - a), np.abs(frames - b)).mean(1) / scale


def verify_gradual(features: Features, lo: int, hi: int, config: CutConfig) -> Transition | None:
    """The transition between anchor frames lo and hi (both outside it, except a black first
    frame of the video, which may be the transition's first), or None if the frames in between
    are not a mixture of the two shots."""
    grey = features.grey[lo: hi + 1].reshape(hi + 1 - lo, -1).astype(np.float32) / 255.0
    a, b = grey[0], grey[-1]
    wa, wb, mix = _mixture_weights(grey, a, b)
    a_dark, b_dark = a.mean() < DARK, b.mean() < DARK
    if a_dark and b_dark:
        return None
    # Weight of the old shot falls, weight of the new one rises; a black anchor has none, so the
    # other's ramp alone places the transition.
    spans = []
    if not a_dark:
        spans.append(_falling_ramp_fit(np.clip(wa, -0.5, 1.5)))
    if not b_dark:
        spans.append(_falling_ramp_fit(np.clip(1.0 - wb, -0.5, 1.5)))
    start, end = min(s for s, _, _ in spans), max(e for _, e, _ in spans)
    ramp_error = max(r for _, _, r in spans)
    opens_video = lo == 0 and a_dark
    if end - start < 2 or (start == 0 and not opens_video) or end > hi - lo or ramp_error > config.gradual_max_ramp_error:
        return None
    inner = slice(start, end)
    wipe = _wipe_residual(grey[inner], a, b)
    linear = float(np.median(mix[inner]))
    wiped = float(np.median(wipe))
    if min(linear, wiped) > config.gradual_max_residual:
        return None
    # The two shots must differ: a flash or a lighting change inside one shot is not a transition.
    first, last = lo + max(0, start - 1), lo + min(end, hi - lo)
    across = max(0.5 * float(np.abs(features.hist[first] - features.hist[last]).sum()),
                 float(np.abs(grey[first - lo] - grey[last - lo]).mean()))
    if across < config.gradual_min_change or (float(np.abs(a - b).mean()) < config.gradual_min_contrast
                                              and not (a_dark or b_dark)):
        return None
    middle = grey[inner].mean(1)
    if a_dark or b_dark or middle.min() < DARK:
        kind = "fade"
    elif wiped < 0.6 * linear:
        kind = "wipe"
        # A wipe's extent: the share of pixels already showing the new shot ramps from 0 to 1.
        # Only pixels where the two shots differ clearly can tell which one they show.
        telling = np.abs(a - b) > 0.15
        if telling.sum() >= 20:
            share = (np.abs(grey - b) < np.abs(grey - a))[:, telling].mean(1)
            start, end, _ = _falling_ramp_fit(1.0 - share)
            if end - start < 2:
                return None
    else:
        kind = "dissolve"
    return Transition(lo + start, lo + end, kind)


REFINE_PAD = 3  # anchors this many frames outside a transition when refining its extent


def refine_gradual(features: Features, lo: int, hi: int, config: CutConfig) -> Transition | None:
    """verify_gradual from wide anchors, then again with anchors just outside the transition
    found, until its extent settles: near anchors differ from the shots' frames next to the
    transition the least (camera and subject motion), so the ramp ends land on the right frames."""
    n = len(features)
    transition = verify_gradual(features, lo, hi, config)
    if transition is None:
        return None
    for _ in range(4):
        near_lo = 0 if transition.start == 0 else max(0, transition.start - REFINE_PAD)
        near_hi = min(n - 1, transition.end + REFINE_PAD - 1)
        if (near_lo, near_hi) == (lo, hi):
            break
        lo, hi = near_lo, near_hi
        refined = verify_gradual(features, lo, hi, config)
        if refined is None or refined == transition:
            break  # the near anchors confirm it, or are too close to tell: keep what was found
        transition = refined
    # A fade joins two shots of different brightness, so its steps differ: only blends are trimmed.
    return _trim(features, transition) if transition.kind in ("dissolve", "wipe") else transition


def _trim(features: Features, transition: Transition) -> Transition:
    """Drop ends whose frame-to-frame change is well below the transition's own: a blend changes
    every frame by about as much, while motion in the shot next to it changes them less, and
    the ramp fit can take that drift for the first or last steps of the blend."""
    start, end = transition.start, transition.end
    grey = features.grey.astype(np.int16)
    step = lambda i: float(np.abs(grey[i] - grey[i - 1]).mean()) if 0 < i < len(grey) else 0.0
    changes = [step(i) for i in range(start, end + 1)]
    typical = float(np.percentile(changes, 75))  # the blend's steps, even when the fit is too wide
    while start < end - 1 and step(start) < 0.6 * typical and start > 0:
        start += 1
    while end > start + 1 and step(end) < 0.6 * typical:
        end -= 1
    return Transition(start, end, transition.kind, transition.level)


def gradual_transitions(features: Features, fps: float, step: int, config: CutConfig, level: str) -> list[Transition]:
    """Candidates where frames `step` apart differ much more than usual, each verified as a mixture."""
    change = features.change(step)
    n = len(features)
    context = max(step, int(round(config.context_seconds * fps)))
    max_len = int(round(config.max_transition_seconds * fps))
    found: list[Transition] = []
    i = step
    while i < n:
        value = change[i]
        window = change[max(step, i - context): i + context + 1]
        # The quieter quarter of the surrounding changes is the shots themselves (transitions
        # and fast motion fill the rest).
        if value < config.gradual_min_change or value < config.gradual_ratio * float(np.percentile(window, 25)) \
                or value < change[max(step, i - step): min(n, i + step + 1)].max():  # not the local peak
            i += 1
            continue
        # The changing frames lie in (i-step, i]; anchors a margin outside, widened while the
        # fitted transition touches them.
        margin = step
        transition = None
        while True:
            lo, hi = max(0, i - step - margin), min(n - 1, i + margin)
            transition = refine_gradual(features, lo, hi, config)
            touches = transition is not None and (transition.start - lo <= 1 or hi - transition.end <= 0)
            if not touches or (hi - lo) >= max_len + 2 * step or (lo == 0 and hi == n - 1):
                break
            margin *= 2
        if transition is not None and transition.frames <= max_len:
            found.append(Transition(transition.start, transition.end, transition.kind, level))
            i = max(i + 1, transition.end)
        else:
            i += 1
    return found


def edge_fades(features: Features, fps: float, config: CutConfig) -> list[Transition]:
    """A fade in from black at the start of the video (a fade out at the end is the same
    thing backwards): black first frame, then the picture's weight ramps up."""
    found = []
    n = len(features)
    if n < 3:
        return found
    level = features.grey.reshape(n, -1).mean(1) / 255.0
    reach = int(round(config.max_transition_seconds * fps))
    for reverse in (False, True):
        order = np.arange(n)[::-1] if reverse else np.arange(n)
        if level[order[0]] >= DARK:
            continue
        view = Features(features.hist[order], features.grey[order])
        lit = np.flatnonzero(level[order] >= DARK)
        if not lit.size:
            continue
        transition = refine_gradual(view, 0, min(n - 1, int(lit[0]) + max(2, int(fps / 4))), config)
        if transition is None or transition.end > reach:
            # Black frames, then the picture at once: the black frames are a too-short shot
            # ahead of a hard cut (the cut level finds it).
            continue
        start, end = (n - transition.end, n - transition.start) if reverse else (transition.start, transition.end)
        found.append(Transition(start, end, "fade", "edges"))
    return found


def merge_transitions(transitions: Iterable[Transition]) -> list[Transition]:
    """One transition where levels overlap. A hard cut found inside a gradual detection wins:
    a dissolve or fade changes every frame by about as much, so it never passes the cut test,
    while a hard cut between moving shots can look like a short ramp to the gradual levels."""
    transitions = list(transitions)
    cuts = [t for t in transitions if t.frames == 0]
    kept = [t for t in transitions
            if t.frames == 0 or not any(t.start <= c.start <= t.end for c in cuts)]
    merged: list[Transition] = []
    for t in sorted(kept, key=lambda t: (t.start, t.end)):
        if merged and (t.start < merged[-1].end or (t.start == merged[-1].end and (t.frames == 0 or merged[-1].frames == 0))):
            last = merged[-1]
            main = last if last.frames >= t.frames else t
            merged[-1] = Transition(min(last.start, t.start), max(last.end, t.end), main.kind, main.level)
        else:
            merged.append(t)
    return merged


def detect_from_features(features: Features, fps: float, config: CutConfig, levels: list[str] | None = None) -> list[Transition]:
    """Every level of the cascade on precomputed features (`levels` picks some, by name)."""
    found = []
    for spec in config.levels:
        name = spec["name"]
        if levels is not None and name not in levels:
            continue
        if spec["kind"] == "cut":
            found += hard_cuts(features, fps, float(spec["ratio"]), float(spec["min_change"]))
        elif spec["kind"] == "gradual":
            step = max(2, int(round(fps / float(spec["fps"]))))
            found += gradual_transitions(features, fps, step, config, name)
        else:
            raise ValueError(f"cuts.levels: unknown kind {spec['kind']!r} (cut or gradual)")
    if levels is None or "edges" in levels:
        found += edge_fades(features, fps, config)
    return merge_transitions(found)


def detect_transitions(frames: Iterable[np.ndarray], fps: float, config: CutConfig) -> list[Transition]:
    """Transitions in a stream of RGB frames (one pass; only small per-frame features are kept)."""
    return detect_from_features(compute_features(frames), fps, config)


def clip_spans(transitions: list[Transition], num_frames: int, keyframes: list[int], fps: float,
               config: CutConfig) -> list[ClipSpan]:
    """Every frame in one span: shots as clips (start snapped forward to a nearby keyframe, the
    skipped frames as 'keyframe_snap'), transitions, and shots too short to keep."""
    snap = int(round(config.keyframe_snap_seconds * fps))
    min_frames = max(1, int(round(config.min_clip_seconds * fps)))
    keys = np.asarray(keyframes, np.int64)
    spans: list[ClipSpan] = []
    position = 0
    for t in [*transitions, Transition(num_frames, num_frames)]:
        start, end = position, min(t.start, num_frames)
        if end > start:
            if end - start < min_frames:
                spans.append(ClipSpan(start, end, "too_short"))
            else:
                later = keys[np.searchsorted(keys, start):]
                snapped = int(later[0]) if later.size and later[0] <= start + snap and end - later[0] >= min_frames else start
                if snapped > start:
                    spans.append(ClipSpan(start, snapped, "keyframe_snap"))
                spans.append(ClipSpan(snapped, end, ""))
        if t.end > t.start and t.start < num_frames:
            spans.append(ClipSpan(t.start, min(t.end, num_frames), f"transition_{t.kind}"))
        position = max(position, min(t.end, num_frames))
    return spans


def find_clips(path: str, info: VideoInfo, config: CutConfig) -> list[ClipSpan]:
    """Stage 2 on one source: decode at low resolution, detect transitions, cut into spans."""
    if not config.enabled:
        transitions: list[Transition] = []
    else:
        frames = (frame_to_rgb(f, config.detect_short_side) for f in iter_decoded(path))
        transitions = detect_transitions(frames, info.fps, config)
    return clip_spans(transitions, info.num_frames, info.keyframes, info.fps, config)
