"""Moving models between svd_fast and a diffusers StableVideoDiffusionPipeline in memory.

The parameter names are identical on both sides, so this is a state-dict copy plus the diffusers
scheduler and feature-extractor settings the released checkpoints ship with (svd_facts §5).
"""
from __future__ import annotations

import torch

# scheduler/scheduler_config.json of the released image-to-video checkpoints
SVD_SCHEDULER_CONFIG = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
    num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
    steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True,
)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def diffusers_kwargs(config_dict: dict) -> dict:
    """A diffusers config dict without its bookkeeping keys, ready for the model constructor."""
    return {k: v for k, v in config_dict.items() if not k.startswith("_")}


def to_diffusers_pipeline(pipe):
    """A diffusers StableVideoDiffusionPipeline with the same weights as an svd_fast SVDPipeline.

    Weights are shared, not copied: the diffusers modules are built on the meta device and take the
    very tensors of `pipe` (the CLIP encoder, a transformers module, is the same object), except the
    channels-last conv weights, which diffusers gets as contiguous copies.
    """
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor

    groups = {pipe.config.unet.norm_num_groups, pipe.config.vae.norm_num_groups}
    if groups != {32}:
        raise ValueError(f"diffusers' SVD models have 32 GroupNorm groups; this model uses {sorted(groups)}, "
                         "so diffusers cannot run it")
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(**diffusers_kwargs(pipe.config.unet.to_diffusers()))
        vae = AutoencoderKLTemporalDecoder(**diffusers_kwargs(pipe.config.vae.to_diffusers()))
    # diffusers runs contiguous (NCHW) activations: give it contiguous conv weights too (a copy of
    # those only), else oneDNN would reorder its inputs on every call and slow it down unfairly.
    unet.load_state_dict(_contiguous(pipe.unet.state_dict()), strict=True, assign=True)
    vae.load_state_dict(_contiguous(pipe.vae.state_dict()), strict=True, assign=True)
    size = pipe.config.image_encoder.image_size
    extractor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True,
    )
    scheduler = EulerDiscreteScheduler(**{**SVD_SCHEDULER_CONFIG, **_sigma_range(pipe)})
    out = StableVideoDiffusionPipeline(
        vae=vae, image_encoder=pipe.image_encoder, unet=unet, scheduler=scheduler, feature_extractor=extractor
    )
    out.set_progress_bar_config(disable=not pipe.progress)
    return out


def _sigma_range(pipe) -> dict:
    return {k: pipe.scheduler_config[k] for k in ("sigma_min", "sigma_max") if k in pipe.scheduler_config}


def _contiguous(state_dict: dict) -> dict:
    return {k: v.contiguous() for k, v in state_dict.items()}


class DiffusersUNet(torch.nn.Module):
    """svd_fast's VideoUNet behind diffusers' UNetSpatioTemporalConditionModel interface.

    The pipeline keeps calling `unet(sample, t, encoder_hidden_states=..., added_time_ids=...,
    return_dict=False)[0]` and reading `unet.config`; the work runs in svd_fast's UNet.
    """

    def __init__(self, unet, diffusers_config):
        super().__init__()
        self.inner = unet
        self.config = diffusers_config

    @property
    def add_embedding(self):  # read by the pipeline to check the micro-conditioning width
        return self.inner.add_embedding

    @property
    def dtype(self) -> torch.dtype:
        return next(self.inner.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.inner.parameters()).device

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, return_dict: bool = True):
        from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionOutput

        out = self.inner(sample, timestep, encoder_hidden_states, added_time_ids)
        return UNetSpatioTemporalConditionOutput(sample=out) if return_dict else (out,)


def accelerate(pipe, numerics: str = "diffusers"):
    """Drop-in speed-up of a diffusers StableVideoDiffusionPipeline: its UNet is replaced, in place,
    by svd_fast's (same weights, moved not copied; channels-last convs, fused kernels).

    numerics='diffusers' keeps diffusers' GroupNorm epsilons so outputs match the unaccelerated
    pipeline; 'sgm' uses those of the released training code. Returns the pipeline.
    """
    from svd_fast.config import UNetConfig
    from svd_fast.layers import channels_last_
    from svd_fast.unet import VideoUNet

    old = pipe.unet
    if isinstance(old, DiffusersUNet):
        return pipe
    config = UNetConfig.from_diffusers(dict(old.config), numerics=numerics)
    with torch.device("meta"):
        unet = VideoUNet(config)
    unet.load_state_dict(old.state_dict(), strict=True, assign=True)
    channels_last_(unet.eval().requires_grad_(False))
    pipe.unet = DiffusersUNet(unet, old.config)
    return pipe
