"""Model configurations: one small dataclass per component, presets by name.

Field names follow diffusers' config.json keys where one exists, so a diffusers folder's config
maps onto these dataclasses directly (see `UNetConfig.from_diffusers`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Numerics modes. "sgm" keeps the epsilons of the released training code (every UNet ResBlock
# GroupNorm at 1e-5); "diffusers" copies diffusers' per-block choices (1e-6 in cross-attention
# down blocks and all up blocks) so that parity tests can require tight agreement.
NUMERICS = ("sgm", "diffusers")

# What a model is conditioned on. All are configs of the one VideoUNet: the conditioning decides what
# is concatenated to the noisy latents, what enters cross-attention and what the vector carries.
#   image          SVD / SVD-XT image-to-video (the released checkpoints)
#   interpolation  SVD-FI: first and last frame (paper appendix D.5)
#   text           text-to-video (the paper's base model, section 4.2)
#   multiview      SVD-MV: orbit views of an object from one image (section 4.5)
CONDITIONINGS = ("image", "interpolation", "text", "multiview")
RENDERS = ("frames", "warp")
"""what an image model's video shows: 'frames', the model's decoded frames (SVD); 'warp', the input
image moved by their camera motion (svd_fast.motion_render)"""


@dataclass(frozen=True)
class UNetConfig:
    """The spatiotemporal UNet (sgm VideoUNet / diffusers UNetSpatioTemporalConditionModel)."""

    in_channels: int = 8
    """noisy latent (4) concatenated with the conditioning-image latent (4)"""
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    """width of each resolution level"""
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    """whether each down level (and its mirrored up level) has spatiotemporal transformers"""
    layers_per_block: int = 2
    """ResBlocks per down level; up levels get one more"""
    num_attention_heads: tuple[int, ...] = (5, 10, 20, 20)
    """heads per level (head dim = width / heads); the middle block uses the last entry"""
    transformer_layers_per_block: int = 1
    cross_attention_dim: int = 1024
    """width of the image-embedding context (CLIP ViT-H projection)"""
    addition_time_embed_dim: int = 256
    """sinusoid width of each micro-conditioning scalar (fps_id, motion_bucket_id, cond_aug)"""
    projection_class_embeddings_input_dim: int = 768
    """width of the concatenated micro-conditioning vector (3 x 256 for SVD)"""
    num_frames: int = 25
    """default clip length the checkpoint was trained for"""
    norm_num_groups: int = 32
    numerics: str = "sgm"
    """'sgm' or 'diffusers' epsilons (see NUMERICS)"""
    mask_embedding: bool = False
    """SVD-FI (paper appendix D.5): a learned mask embedding z_m, one value per latent channel
    (parameter `mask_embedding`, shape (out_channels,), broadcast over space), stands in for the
    conditioning latent of every frame whose mask channel is 0. The input is then
    [noisy latent | conditioning latents | binary mask], in_channels = 2 * out_channels + 1.
    Stored in a diffusers unet/config.json as `svd_fast_mask_embedding` (diffusers ignores the key
    and leaves the extra tensor `mask_embedding` unused)"""
    latent_prior: float = 0.0
    """svd_fast's addition (0: off, SVD's own denoiser): when > 0 the denoiser predicts the clip as a
    correction of mu, the conditioning latents times this factor (the VAE's scaling factor): each
    frame's own conditioning latent (image-to-video, multi-view: the input image's), and for SVD-FI's
    frames without one the linear blend in time of the two ends,
    D = mu + c_skip (x - mu) + c_out F(c_in (x - mu), ...) (svd_fast.denoiser.latent_prior). Needs
    concatenated conditioning latents. Stored as `svd_fast_latent_prior` in unet/config.json"""
    prior_conditioning: bool = False
    """svd_fast's addition for SVD-FI with a latent prior (needs mask_embedding and latent_prior): the
    UNet also sees the prior it corrects. The conditioning latent of each frame whose mask is 0 is the
    prior's latent (unscaled) plus z_m instead of z_m alone (svd_fast.denoiser), so the network can
    see where the prior's in-between frames are wrong (a flow interpolation's ghosts at occlusions)
    instead of only the two ends. Stored as `svd_fast_prior_conditioning` in unet/config.json"""

    def __post_init__(self):
        if self.mask_embedding and self.in_channels != 2 * self.out_channels + 1:
            raise ValueError(f"mask_embedding needs in_channels = 2 * out_channels + 1 (noisy latent, conditioning "
                             f"latents, mask), got in_channels={self.in_channels}, out_channels={self.out_channels}")
        if self.latent_prior < 0 or self.latent_prior > 0 and self.in_channels < 2 * self.out_channels:
            raise ValueError(f"latent_prior must be >= 0 and needs concatenated conditioning latents (in_channels >= "
                             f"2 * out_channels), got latent_prior={self.latent_prior}, in_channels={self.in_channels}")
        if self.prior_conditioning and not (self.mask_embedding and self.latent_prior > 0):
            raise ValueError("prior_conditioning needs mask_embedding and latent_prior > 0 (an SVD-FI model with a prior)")
        levels = len(self.block_out_channels)
        if len(self.attention_levels) != levels or len(self.num_attention_heads) != levels:
            raise ValueError(
                f"block_out_channels, attention_levels and num_attention_heads need one entry per "
                f"level; got {self.block_out_channels}, {self.attention_levels}, {self.num_attention_heads}"
            )
        for width, heads in zip(self.block_out_channels, self.num_attention_heads):
            if width % heads or width % self.norm_num_groups:
                raise ValueError(
                    f"width {width} must be divisible by its head count {heads} and by "
                    f"{self.norm_num_groups} GroupNorm groups"
                )
        if self.numerics not in NUMERICS:
            raise ValueError(f"numerics must be one of {NUMERICS}, got {self.numerics!r}")

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    def resnet_eps(self, where: str, level: int = 0) -> float:
        """GroupNorm epsilon of the ResBlocks in `where` ('down', 'mid', 'up') at `level`."""
        if self.numerics == "sgm":
            return 1e-5
        if where == "down":
            return 1e-6 if self.attention_levels[level] else 1e-5
        return 1e-5 if where == "mid" else 1e-6

    @classmethod
    def from_diffusers(cls, cfg: dict, numerics: str = "sgm") -> "UNetConfig":
        """Build from a diffusers `unet/config.json` dict; rejects layouts this model cannot express."""
        down = list(cfg.get("down_block_types", ()))
        up = list(cfg.get("up_block_types", ()))
        attention = tuple(t.startswith("CrossAttn") for t in down)
        expected_up = [
            ("CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal") for a in reversed(attention)
        ]
        known_down = {"CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"}
        if not down or set(down) - known_down or up != expected_up:
            raise ValueError(
                f"unsupported UNet block layout: down={down} up={up}; svd_fast expects spatiotemporal "
                f"blocks with the up path mirroring the down path"
            )
        heads = cfg.get("num_attention_heads", cls.num_attention_heads)
        heads = (heads,) * len(down) if isinstance(heads, int) else tuple(heads)
        for key in ("layers_per_block", "transformer_layers_per_block", "cross_attention_dim"):
            if not isinstance(cfg.get(key, 1), int):
                raise ValueError(f"unsupported per-level {key}={cfg[key]!r}: svd_fast needs one value")
        defaults = cls()
        return cls(
            in_channels=cfg.get("in_channels", defaults.in_channels),
            out_channels=cfg.get("out_channels", defaults.out_channels),
            block_out_channels=tuple(cfg.get("block_out_channels", defaults.block_out_channels)),
            attention_levels=attention,
            layers_per_block=cfg.get("layers_per_block", defaults.layers_per_block),
            num_attention_heads=heads,
            transformer_layers_per_block=cfg.get("transformer_layers_per_block", 1),
            cross_attention_dim=cfg.get("cross_attention_dim", defaults.cross_attention_dim),
            addition_time_embed_dim=cfg.get("addition_time_embed_dim", defaults.addition_time_embed_dim),
            projection_class_embeddings_input_dim=cfg.get(
                "projection_class_embeddings_input_dim", defaults.projection_class_embeddings_input_dim
            ),
            num_frames=cfg.get("num_frames", defaults.num_frames),
            norm_num_groups=cfg.get("norm_num_groups", defaults.norm_num_groups),
            numerics=numerics,
            mask_embedding=bool(cfg.get(MASK_EMBEDDING_KEY, False)),
            latent_prior=float(cfg.get(LATENT_PRIOR_KEY, 0.0)),
            prior_conditioning=bool(cfg.get(PRIOR_CONDITIONING_KEY, False)),
        )

    def to_diffusers(self) -> dict:
        """The diffusers `unet/config.json` content for this configuration."""
        down = [("CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal") for a in self.attention_levels]
        up = [("CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal") for a in reversed(self.attention_levels)]
        return {
            "_class_name": "UNetSpatioTemporalConditionModel",
            "sample_size": 96,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "down_block_types": down,
            "up_block_types": up,
            "block_out_channels": list(self.block_out_channels),
            "addition_time_embed_dim": self.addition_time_embed_dim,
            "projection_class_embeddings_input_dim": self.projection_class_embeddings_input_dim,
            "layers_per_block": self.layers_per_block,
            "cross_attention_dim": self.cross_attention_dim,
            "transformer_layers_per_block": self.transformer_layers_per_block,
            "num_attention_heads": list(self.num_attention_heads),
            "num_frames": self.num_frames,
            **_groups_entry(self.norm_num_groups),
            **({MASK_EMBEDDING_KEY: True} if self.mask_embedding else {}),
            **({LATENT_PRIOR_KEY: self.latent_prior} if self.latent_prior else {}),
            **({PRIOR_CONDITIONING_KEY: True} if self.prior_conditioning else {}),
        }


MASK_EMBEDDING_KEY = "svd_fast_mask_embedding"
"""unet/config.json key of UNetConfig.mask_embedding (written only when true)"""
LATENT_PRIOR_KEY = "svd_fast_latent_prior"
"""unet/config.json key of UNetConfig.latent_prior (written only when > 0)"""
PRIOR_CONDITIONING_KEY = "svd_fast_prior_conditioning"
"""unet/config.json key of UNetConfig.prior_conditioning (written only when true)"""


def _groups_entry(groups: int) -> dict:
    """`norm_num_groups` for a diffusers config.json, written only when it is not SVD's 32: diffusers'
    SVD classes always use 32 groups (and warn about the unexpected key), our loaders read it."""
    return {} if groups == 32 else {"norm_num_groups": groups}


@dataclass(frozen=True)
class VAEConfig:
    """SD KL-f8 encoder + temporal ('deflickering') decoder (diffusers AutoencoderKLTemporalDecoder)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    """ResBlocks per encoder level; decoder levels get one more"""
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    """latents seen by the UNet are scaling_factor x encoder mean"""
    force_upcast: bool = True
    """decode in fp32 when the model runs in fp16 (fp16 overflows in the decoder)"""

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent pixel along each side (8 for the released KL-f8 VAE)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, cfg: dict) -> "VAEConfig":
        defaults = cls()
        return cls(
            in_channels=cfg.get("in_channels", defaults.in_channels),
            out_channels=cfg.get("out_channels", defaults.out_channels),
            latent_channels=cfg.get("latent_channels", defaults.latent_channels),
            block_out_channels=tuple(cfg.get("block_out_channels", defaults.block_out_channels)),
            layers_per_block=cfg.get("layers_per_block", defaults.layers_per_block),
            scaling_factor=cfg.get("scaling_factor", defaults.scaling_factor),
            force_upcast=cfg.get("force_upcast", defaults.force_upcast),
            norm_num_groups=cfg.get("norm_num_groups", defaults.norm_num_groups),
        )

    def to_diffusers(self) -> dict:
        return {
            "_class_name": "AutoencoderKLTemporalDecoder",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "down_block_types": ["DownEncoderBlock2D"] * len(self.block_out_channels),
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "latent_channels": self.latent_channels,
            "sample_size": 768,
            "scaling_factor": self.scaling_factor,
            "force_upcast": self.force_upcast,
            **_groups_entry(self.norm_num_groups),
        }


CLIP_VISION_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                           patch_size=32, image_size=224, projection_dim=512, hidden_act="quick_gelu",
                           layer_norm_eps=1e-5)
"""transformers' CLIPVisionConfig defaults: what a config.json that omits an entry means"""
CLIP_ACTIVATIONS = ("gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh")


@dataclass(frozen=True)
class ImageEncoderConfig:
    """CLIP vision tower with projection (OpenCLIP ViT-H/14 for SVD), run by svd_fast.clip_vision."""

    hidden_size: int = 1280
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    intermediate_size: int = 5120
    patch_size: int = 14
    image_size: int = 224
    projection_dim: int = 1024
    hidden_act: str = "gelu"
    """OpenCLIP ViT-H uses exact GELU; transformers' default quick_gelu would be wrong"""
    layer_norm_eps: float = 1e-5

    def validate(self) -> None:
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size",
                     "image_size", "projection_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"invalid CLIP vision config: {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"invalid CLIP vision config: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.patch_size > self.image_size:
            raise ValueError(f"invalid CLIP vision config: patch_size {self.patch_size} > image_size {self.image_size}")
        if self.hidden_act not in CLIP_ACTIVATIONS:
            raise ValueError(f"invalid CLIP vision config: hidden_act {self.hidden_act!r} is not supported "
                             f"(one of {', '.join(CLIP_ACTIVATIONS)})")
        if isinstance(self.layer_norm_eps, bool) or not isinstance(self.layer_norm_eps, (int, float)) \
                or not 0 < self.layer_norm_eps < 1:
            raise ValueError(f"invalid CLIP vision config: layer_norm_eps must be in (0, 1), got {self.layer_norm_eps!r}")

    def to_transformers(self):
        """transformers' CLIPVisionConfig (for building transformers' own module; svd_fast does not need it)."""
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig(**dataclasses.asdict(self))

    def to_json_dict(self, dtype: str) -> dict:
        """An `image_encoder/config.json` that transformers and diffusers load as CLIPVisionModelWithProjection."""
        return {"architectures": ["CLIPVisionModelWithProjection"], "model_type": "clip_vision_model",
                **dataclasses.asdict(self), "num_channels": 3, "attention_dropout": 0.0, "initializer_range": 0.02,
                "initializer_factor": 1.0, "dtype": dtype}

    @classmethod
    def from_transformers(cls, cfg: dict) -> "ImageEncoderConfig":
        """Build from an `image_encoder/config.json` dict (a CLIPVisionConfig, or a full CLIPConfig's
        `vision_config`); missing entries take transformers' defaults, as transformers would load them."""
        if not isinstance(cfg, dict):
            raise ValueError(f"invalid CLIP vision config: expected a JSON object, got {type(cfg).__name__}")
        cfg = cfg.get("vision_config", cfg)
        if not isinstance(cfg, dict):
            raise ValueError("invalid CLIP vision config: vision_config is not a JSON object")
        if cfg.get("num_channels", 3) != 3:
            raise ValueError(f"unsupported CLIP vision config: num_channels={cfg['num_channels']}, expected 3")
        config = cls(**{name: cfg.get(name, default) for name, default in CLIP_VISION_DEFAULTS.items()})
        config.validate()
        return config


IMAGE_SAMPLING_OFF = {"image_init_sigma": None, "keep_first_frame": False, "render": "frames"}
"""the image-model-only sampling defaults switched off: for variants derived from an image model"""


@dataclass(frozen=True)
class SVDConfig:
    """A whole image-to-video model plus its sampling defaults."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    # Sampling defaults: what `python -m svd_fast.sample` uses when a flag is not given (SVDPipeline's
    # __call__ keeps diffusers' defaults; the interpolation, text and multi-view pipelines take these
    # for arguments left None). The values here are SVD's.
    num_frames: int = 14
    num_inference_steps: int = 25
    height: int = 576
    width: int = 1024
    fps: int = 7
    motion_bucket_id: int = 127
    max_guidance_scale: float = 3.0
    image_init_sigma: float | None = None
    """start the sampler from the image noised to this sigma (None: from pure noise, as SVD)"""
    keep_first_frame: bool = False
    """hold frame 0 to the image during sampling (SVDPipeline.__call__)"""
    render: str = "frames"
    """'frames': the model's frames; 'warp': the input image moved by their camera motion (svd_fast.motion_render)"""
    prior_noise: float = 1.0
    """models with a latent prior (UNetConfig.latent_prior): the sampler starts at the prior plus this times
    the initial noise (0: at the prior itself, a deterministic estimate)"""
    lead_sigma: float | None = None
    """text models: the sampler steps above this sigma are conditioned on the lead prompt (by default the
    caption with its dominant colour alone: svd_fast.text_to_video), the rest on the prompt; None: off"""
    conditioning: str = "image"
    """one of CONDITIONINGS; checkpoints that do not say are 'image' models"""

    def __post_init__(self):
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.render not in RENDERS:
            raise ValueError(f"render must be one of {RENDERS}, got {self.render!r}")
        if self.conditioning != "image" and (self.image_init_sigma is not None or self.keep_first_frame
                                             or self.render != "frames"):
            raise ValueError(f"image_init_sigma, keep_first_frame and render are image-model sampling defaults; a "
                             f"{self.conditioning!r} model cannot have them (pass {IMAGE_SAMPLING_OFF} when deriving it)")
        if self.lead_sigma is not None and (self.conditioning != "text" or not 0 <= self.lead_sigma < float("inf")):
            raise ValueError(f"lead_sigma is a text model's sampling default, a finite sigma >= 0; got {self.lead_sigma} "
                             f"for a {self.conditioning!r} model")
        if not self.prior_noise >= 0 or self.prior_noise != 1 and not self.unet.latent_prior:
            raise ValueError(f"prior_noise must be >= 0 and is for models with a latent prior only, got {self.prior_noise}")

    @classmethod
    def from_name(cls, name: str) -> "SVDConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name]()


def _svd() -> SVDConfig:
    return SVDConfig(unet=UNetConfig(num_frames=14), num_frames=14)


def _svd_xt() -> SVDConfig:
    return SVDConfig(unet=UNetConfig(num_frames=25), num_frames=25, num_inference_steps=30)


def _tiny() -> SVDConfig:
    """Same architecture at toy width, for tests and the embedded default model's smoke runs."""
    return SVDConfig(
        unet=UNetConfig(
            block_out_channels=(32, 64),
            attention_levels=(True, False),
            num_attention_heads=(1, 2),
            layers_per_block=1,
            cross_attention_dim=32,
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=24,
            num_frames=4,
        ),
        vae=VAEConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1),  # 4 levels: the 8x factor diffusers assumes
        image_encoder=ImageEncoderConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, projection_dim=32
        ),
        num_frames=4,
        num_inference_steps=4,
        height=64,
        width=64,
    )


PRESETS = {"svd": _svd, "svd_xt": _svd_xt, "tiny": _tiny}
