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
    very tensors of `pipe` (the CLIP tower becomes transformers' CLIPVisionModelWithProjection on the
    same tensors), except the channels-last conv weights, which diffusers gets as contiguous copies.
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
        vae=vae, image_encoder=transformers_image_encoder(pipe.image_encoder), unet=unet, scheduler=scheduler, feature_extractor=extractor
    )
    out.set_progress_bar_config(disable=not pipe.progress)
    return out


def _sigma_range(pipe) -> dict:
    return {k: pipe.scheduler_config[k] for k in ("sigma_min", "sigma_max") if k in pipe.scheduler_config}


def _contiguous(state_dict: dict) -> dict:
    return {k: v.contiguous() for k, v in state_dict.items()}


class _DiffusersFacade(torch.nn.Module):
    """An svd_fast model (`inner`) with a diffusers model's `config`, `dtype` and `device`."""

    def __init__(self, inner, diffusers_config):
        super().__init__()
        self.inner = inner
        self.config = diffusers_config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.inner.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.inner.parameters()).device


class DiffusersUNet(_DiffusersFacade):
    """svd_fast's VideoUNet behind diffusers' UNetSpatioTemporalConditionModel interface.

    The pipeline keeps calling `unet(sample, t, encoder_hidden_states=..., added_time_ids=...,
    return_dict=False)[0]` and reading `unet.config`; the work runs in svd_fast's UNet.
    """

    @property
    def add_embedding(self):  # read by the pipeline to check the micro-conditioning width
        return self.inner.add_embedding

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, return_dict: bool = True):
        from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionOutput

        out = self.inner(sample, timestep, encoder_hidden_states, added_time_ids)
        return UNetSpatioTemporalConditionOutput(sample=out) if return_dict else (out,)


def svd_unet(diffusers_unet, numerics: str = "diffusers"):
    """svd_fast's VideoUNet holding a diffusers UNet's very weight tensors (channels-last convs)."""
    from svd_fast.config import UNetConfig
    from svd_fast.layers import channels_last_
    from svd_fast.unet import VideoUNet

    config = UNetConfig.from_diffusers(dict(diffusers_unet.config), numerics=numerics)
    with torch.device("meta"):
        unet = VideoUNet(config)
    unet.load_state_dict(diffusers_unet.state_dict(), strict=True, assign=True)
    return channels_last_(unet.eval().requires_grad_(False))


def svd_vae(diffusers_vae):
    """svd_fast's TemporalVAE holding a diffusers AutoencoderKLTemporalDecoder's weights."""
    from svd_fast.config import VAEConfig
    from svd_fast.layers import channels_last_
    from svd_fast.vae import TemporalVAE

    with torch.device("meta"):
        vae = TemporalVAE(VAEConfig.from_diffusers(dict(diffusers_vae.config)))
    vae.load_state_dict(diffusers_vae.state_dict(), strict=True, assign=True)
    return channels_last_(vae.eval().requires_grad_(False))


def diffusers_unet(unet, config: dict):
    """diffusers' UNetSpatioTemporalConditionModel rebuilt from an svd_fast UNet's weights."""
    from diffusers import UNetSpatioTemporalConditionModel

    with torch.device("meta"):
        model = UNetSpatioTemporalConditionModel(**diffusers_kwargs(config))
    model.load_state_dict(_contiguous(unet.state_dict()), strict=True, assign=True)
    return model.eval().requires_grad_(False)


def diffusers_vae(vae, config: dict):
    """diffusers' AutoencoderKLTemporalDecoder rebuilt from an svd_fast VAE's weights."""
    from diffusers import AutoencoderKLTemporalDecoder

    with torch.device("meta"):
        model = AutoencoderKLTemporalDecoder(**diffusers_kwargs(config))
    model.load_state_dict(_contiguous(vae.state_dict()), strict=True, assign=True)
    return model.eval().requires_grad_(False)


def svd_image_encoder(model):
    """svd_fast's CLIP tower holding the weights of transformers' CLIPVisionModelWithProjection."""
    from svd_fast.clip_vision import CLIPVisionTower
    from svd_fast.config import ImageEncoderConfig

    with torch.device("meta"):
        tower = CLIPVisionTower(ImageEncoderConfig.from_transformers(model.config.to_dict()))
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    tower.load_state_dict(state, strict=True, assign=True)
    return tower.eval().requires_grad_(False)


def transformers_image_encoder(tower):
    """transformers' CLIPVisionModelWithProjection rebuilt from an svd_fast CLIP tower's weights."""
    from transformers import CLIPVisionModelWithProjection

    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(tower.config.to_transformers())
    embeddings = model.vision_model.embeddings  # position ids: a non-persistent buffer of transformers'
    embeddings.position_ids = torch.arange(embeddings.num_positions, device=tower.device).expand(1, -1)
    model.load_state_dict(tower.state_dict(), strict=True, assign=True)
    return model.eval().requires_grad_(False)


class _Output:
    """The attribute shapes diffusers' pipeline reads: .sample, .latent_dist.mode()."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


class _Mode:
    def __init__(self, mean):
        self.mean = mean

    def mode(self):
        return self.mean


class DiffusersVAE(_DiffusersFacade):
    """svd_fast's TemporalVAE behind the part of AutoencoderKLTemporalDecoder's interface that
    StableVideoDiffusionPipeline uses: encode(x).latent_dist.mode(), decode(z, num_frames).sample,
    config, dtype, device (and .to(), which it calls around fp16 upcasting)."""

    def encode(self, x, return_dict: bool = True):
        mode = _Mode(self.inner.encode(x))
        return _Output(latent_dist=mode) if return_dict else (mode,)

    def decode(self, z, num_frames: int, return_dict: bool = True):
        frames = self.inner.decode(z, num_frames)
        return _Output(sample=frames) if return_dict else (frames,)

    def forward(self, sample, num_frames: int = 1):  # the pipeline inspects this signature for num_frames
        return self.decode(self.inner.encode(sample), num_frames).sample


def encode_image_for_diffusers(self, image, device, num_videos_per_prompt, do_classifier_free_guidance):
    """StableVideoDiffusionPipeline._encode_image on svd_fast's preprocessing (the same antialiased
    resize and CLIP normalisation, in torch instead of CLIPImageProcessor's numpy round trip)."""
    from svd_fast import conditioner

    if isinstance(image, torch.Tensor):  # diffusers skips the resize for tensors: keep its behaviour
        return type(self)._encode_image(self, image, device, num_videos_per_prompt, do_classifier_free_guidance)
    embeddings = conditioner.encode_image(self.image_encoder, image).to(device)
    embeddings = embeddings.repeat_interleave(num_videos_per_prompt, dim=0)
    if do_classifier_free_guidance:
        embeddings = torch.cat([torch.zeros_like(embeddings), embeddings])
    return embeddings
