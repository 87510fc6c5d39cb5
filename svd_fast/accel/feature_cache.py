"""Feature caching across sampling steps (DeepCache, Ma et al., arXiv 2312.00858), for the
spatiotemporal UNet.

Between neighbouring denoising steps the UNet's deep features change little while its shallow
ones change a lot. So on most steps only the shallow part runs: the input conv, the first
`depth` steps of the down path (each adds a skip connection) and the up-path layers that take
those skips, and the deep part's output (the hidden state that enters the first of those up
layers) comes from the last full step. VideoUNet.forward does the split; this module decides,
per UNet call, whether the cache may give its stored features back.

Schedule: a sampling run of n steps runs steps 0, N, 2N, ... and the last step fully (N =
`interval`); the others reuse. Both CFG halves are one batch, so they share one entry. The
stored features belong to one run and one input signature (shape, dtype, device of the
sample): a new run, another signature, or a call outside a run computes everything afresh, so a
new video never sees the features of the last one. Interval 1 runs every step fully: the same
operations in the same order as without a cache (bitwise the same output).

The pipeline says where a run is: svd_fast's SVDPipeline calls `start_run(steps)` before
sampling and `at_step(i)` after each step; on diffusers' StableVideoDiffusionPipeline the UNet
facade's forward is wrapped to read the step from the pipeline's scheduler (`follow_scheduler`).
A sampler that calls the UNet twice per step (Heun) gets the same decision for both calls.
"""
from __future__ import annotations

import weakref

import torch

DEFAULT_BRANCH = 0


class FeatureCache:
    """Which UNet calls of a sampling run may reuse the deep features, and the features.

    interval: a full step every `interval` steps (1: every step, exact).
    branch: where the shallow part ends, DeepCache's cache_branch: 0 keeps only the first layer
    of the first down level (and its mirror) shallow; each step up recomputes one more down step
    (a layer or a downsampler) and the up layer that takes its skip: slower, closer to exact.
    """

    def __init__(self, interval: int, branch: int = DEFAULT_BRANCH):
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            raise ValueError(f"cache_interval must be an integer >= 1, got {interval!r}")
        if not isinstance(branch, int) or isinstance(branch, bool) or branch < 0:
            raise ValueError(f"cache_branch must be an integer >= 0, got {branch!r}")
        self.interval, self.branch = interval, branch
        self.steps: int | None = None  # steps of the current run; None: no run in progress
        self.step = 0
        self._key = self._features = None
        self.calls = {"full": 0, "reused": 0}  # UNet calls since the cache was made

    @property
    def depth(self) -> int:
        """Down-path steps in the shallow part (VideoUNet.forward)."""
        return self.branch + 1

    # ------------------------------------------------------------------ told by the pipeline
    def start_run(self, steps: int) -> None:
        """A sampling run of `steps` steps starts: nothing stored so far may be reused."""
        self.steps, self.step = steps, 0
        self._forget()

    def at_step(self, step: int) -> None:
        """The next UNet calls belong to step `step` (0-based) of the current run."""
        self.step = step
        if self.steps is not None and step >= self.steps:  # the run is over: free the features
            self.end_run()

    def end_run(self) -> None:
        """No run in progress: every call computes everything, nothing is kept."""
        self.steps = None
        self._forget()

    def is_full_step(self) -> bool:
        """Whether the current step runs the whole UNet (outside a run every call does)."""
        if self.steps is None:
            return True
        return self.step % self.interval == 0 or self.step >= self.steps - 1

    # ---------------------------------------------------------------------- asked by the UNet
    def reuse(self, key):
        """The stored deep features when this call may reuse them, else None (compute them)."""
        if self.is_full_step() or key != self._key or self._features is None:
            self.calls["full"] += 1
            return None
        self.calls["reused"] += 1
        return self._features

    def store(self, key, features: torch.Tensor) -> None:
        """Keep a full call's deep features for the next steps (not copied: nothing writes to them)."""
        if self.steps is None or self.interval == 1:
            self._forget()  # nothing will reuse them
        else:
            self._key, self._features = key, features

    def _forget(self) -> None:
        self._key = self._features = None


# -------------------------------------------------------------------------- attaching to a UNet
def attach(unet, interval: int, branch: int = DEFAULT_BRANCH) -> FeatureCache:
    """Give an svd_fast VideoUNet a FeatureCache (replacing any earlier one) and return it."""
    from svd_fast.unet import VideoUNet

    if not isinstance(unet, VideoUNet):
        raise TypeError(f"feature caching needs svd_fast's eager VideoUNet, got {type(unet).__name__}")
    cache = FeatureCache(interval, branch)
    down_steps = sum(len(block.steps()) for block in unet.down_blocks)
    if cache.depth > down_steps:
        raise ValueError(f"cache_branch must be at most {down_steps - 1} for this UNet "
                         f"({down_steps} down-path steps), got {branch}")
    unet.feature_cache = cache
    return cache


def detach(unet) -> None:
    unet.feature_cache = None


def follow_scheduler(facade, pipe, cache: FeatureCache) -> None:
    """Make a diffusers pipeline's UNet facade tell `cache` where each call is in the run.

    diffusers' StableVideoDiffusionPipeline calls scheduler.scale_model_input before the UNet, so
    at each UNet call scheduler.step_index is the current step (0 starts a run; set_timesteps
    resets it every pipeline call) and len(scheduler.timesteps) the run's length. The scheduler
    is read from the pipeline at each call, so a scheduler swapped in later is followed too.
    """
    pipe_ref = weakref.ref(pipe)  # the facade belongs to the pipeline: no reference cycle
    forward = facade.forward

    def forward_following_the_run(sample, timestep, *args, **kwargs):
        pipe = pipe_ref()
        scheduler = getattr(pipe, "scheduler", None)
        step = getattr(scheduler, "step_index", None)
        if step is None:  # a scheduler without step_index: find the timestep in its schedule
            step = _index_of(getattr(scheduler, "timesteps", None), timestep)
        if step is None:
            cache.end_run()  # not inside a run we can follow: compute everything
        elif step == 0:
            cache.start_run(len(scheduler.timesteps))
        else:
            cache.at_step(step)
        return forward(sample, timestep, *args, **kwargs)

    facade.forward = forward_following_the_run


def unfollow_scheduler(facade) -> None:
    facade.__dict__.pop("forward", None)  # the class's forward again


def _index_of(timesteps, timestep) -> int | None:
    if timesteps is None:
        return None
    value = float(torch.as_tensor(timestep).reshape(-1)[0])
    matches = (torch.as_tensor(timesteps).float() == value).nonzero()
    return int(matches[0]) if len(matches) else None
