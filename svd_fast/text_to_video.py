"""Text-to-video: SVDTextToVideoPipeline, the paper's base model (section 4.2) as a config of the one UNet.

A text model (SVDConfig.conditioning == "text") is the same VideoUNet with
- no concatenated image latent: in_channels == the latent channels;
- cross-attention over the CLIP text tower's token states: `last_hidden_state` (final LayerNorm
  applied) of every token of the padded prompt, (B, L, hidden), so cross_attention_dim is the
  text tower's hidden width;
- the vector conditioning [fps - 1, motion bucket, noise augmentation] kept in SVD's layout, the
  last entry always 0 (there is no conditioning frame to augment).
Guidance is classifier-free with the encoded empty prompt (or the negative prompt) as the
unconditional, at one scale for every frame (`guidance_scale`).

A lead prompt conditions the steps above `lead_sigma` instead of the prompt (prompt editing over the
noise levels: the layout is drawn at high noise, detail at low). Its default, for a caption that names two
colours as the default captioner writes them ("mostly red (60%) and blue (30%)"), is the caption with the
dominant colour alone ("mostly red (60%)"): the default text model's UNet reads a caption's colours as a
set and makes the second one dominant in a third of its videos (its MODEL_CARD.md); stating the dominant
colour alone while the colours are laid out fixes which one covers most of the frame, and the whole caption
draws the rest. The default text model sets lead_sigma; models without it sample without a lead.

The sampling core (noise, samplers, guidance batch, decode, output formats, callbacks, speed
modes) is SVDPipeline's: the text conditioning enters it through `_conditioning`, and
`TextConditioning.unconditional()` hands the guider the negative prompt instead of zeros.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import torch

from svd_fast import camera_start, conditioner
from svd_fast.config import ImageEncoderConfig
from svd_fast.denoiser import Conditioning
from svd_fast.pipeline import SVDPipeline


def encode_prompt(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """Token states (B, L, hidden) of the prompts, padded to the tokenizer's model_max_length."""
    param = next(text_encoder.parameters())
    length = min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))
    ids = tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True,
                    return_tensors="pt")["input_ids"].to(param.device)
    with torch.no_grad():
        return text_encoder(input_ids=ids).last_hidden_state


TWO_COLOURS = re.compile(r"mostly (\w+) \((\d+)%\) and (\w+) \((\d+)%\)")
"""two colours with their shares as the default captioner writes them (svd_fast.curate.captions.describe_colours)"""


def dominant_colour_lead(prompt: str) -> str:
    """The prompt with only its dominant colour when it names two as the default captioner writes them
    ("mostly red (60%) and blue (30%)" -> "mostly red (60%)"); any other prompt unchanged."""
    return TWO_COLOURS.sub(r"mostly \1 (\2%)", prompt, count=1)


def _prompt_list(value, what: str) -> list[str]:
    prompts = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{what} must be a string or a non-empty list of strings, got {value!r}")
    return prompts


def _one_per_prompt(value, what: str, prompts: list[str]) -> list[str]:
    """`value` (a string or a list) as one string per prompt: a single one is used for every prompt."""
    values = _prompt_list(value, what)
    if len(values) == 1 and len(prompts) > 1:
        values = values * len(prompts)
    if len(values) != len(prompts):
        raise ValueError(f"got {len(values)} {what.replace('_', ' ')}s for {len(prompts)} prompts")
    return values


@dataclass
class TextConditioning(Conditioning):
    """Conditioning of a text model: context = prompt token states; unconditional = the negative prompt's;
    lead_context: the lead prompt's token states, for the steps above lead_sigma (None: no lead)."""

    negative_context: torch.Tensor | None = None
    lead_context: torch.Tensor | None = None
    lead_sigma: float | None = None

    def unconditional(self) -> Conditioning:
        return Conditioning(self.image_latents, self.negative_context, self.added_time_ids, self.image_only_indicator)

    @property
    def lead(self) -> "TextConditioning | None":
        """The conditioning of the steps above lead_sigma (SVDPipeline switches to it), or None."""
        if self.lead_context is None:
            return None
        return dataclasses.replace(self, context=self.lead_context, lead_context=None, lead_sigma=None)


@dataclass
class _Prompts:
    prompt: list[str]
    negative_prompt: list[str]
    lead_prompt: list[str] | None = None
    lead_sigma: float | None = None


class SVDTextToVideoPipeline(SVDPipeline):
    """Text-to-video sampling on svd_fast's UNet and VAE with a transformers CLIP text tower."""

    conditioning = "text"

    def __init__(self, unet, vae, text_encoder, tokenizer, config, scheduler_config: dict | None = None):
        if config.conditioning != "text":
            raise ValueError(f"SVDTextToVideoPipeline needs a text model, this one is conditioned on {config.conditioning!r}")
        if unet.config.in_channels != vae.config.latent_channels:
            raise ValueError(f"a text model's UNet takes only the noisy latents: in_channels must be "
                             f"{vae.config.latent_channels}, got {unet.config.in_channels}")
        if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
            raise ValueError(f"cross_attention_dim {unet.config.cross_attention_dim} differs from the text tower's "
                             f"width {text_encoder.config.hidden_size}")
        # a text model has no image tower: its config carries the default (unused) one, as the
        # diffusers folder (no image_encoder/) reads back
        config = dataclasses.replace(config, image_encoder=ImageEncoderConfig())
        super().__init__(unet, vae, text_encoder, config, scheduler_config)
        self.image_encoder = None
        self.text_encoder, self.tokenizer = text_encoder, tokenizer

    @classmethod
    def from_pretrained(cls, path, torch_dtype=None, device=None, numerics: str = "sgm", use_ema: bool = False,
                        compile: bool = False, cuda_graphs: bool | None = None, tokenizer=None):
        """Load a text model from a diffusers folder (text_encoder/ + tokenizer/) or an sgm file.

        tokenizer: a transformers tokenizer (or a folder) to use instead of the checkpoint's; needed
        for sgm files written elsewhere, which carry no tokenizer."""
        from svd_fast.checkpoints import load_components
        from svd_fast.pipeline import _resolve_dtype

        if isinstance(torch_dtype, str):
            torch_dtype = _resolve_dtype(torch_dtype, device, path)
        parts = load_components(path, dtype=torch_dtype, device=device, numerics=numerics, use_ema=use_ema,
                                tokenizer=tokenizer)
        if parts["config"].conditioning != "text":
            raise ValueError(f"{path}: is an {parts['config'].conditioning!r}-conditioned model, not a text-to-video one")
        pipe = cls(parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["config"],
                   parts.get("scheduler_config"))
        return pipe._accelerated(compile, cuda_graphs)

    @classmethod
    def from_config(cls, config, tokenizer, text_encoder, torch_dtype=None, device=None, seed: int = 0):
        """Random UNet and VAE of `config` (an SVDConfig with conditioning 'text') around a given
        tokenizer and transformers CLIP text model (tests, training from scratch)."""
        from svd_fast.unet import VideoUNet
        from svd_fast.vae import TemporalVAE

        torch.manual_seed(seed)
        pipe = cls(VideoUNet(config.unet), TemporalVAE(config.vae), text_encoder, tokenizer, config)
        return pipe.to(device=device, dtype=torch_dtype)

    def save_pretrained(self, path, layout: str = "diffusers", overwrite: bool = False) -> None:
        from svd_fast.adapters import unet_to_save
        from svd_fast.checkpoints import save_components

        components = {"config": self.config, "unet": unet_to_save(self), "vae": self.vae,
                      "text_encoder": self.text_encoder, "tokenizer": self.tokenizer,
                      "scheduler_config": self.scheduler_config}
        save_components(components, path, layout=layout, overwrite=overwrite)

    def to(self, device=None, dtype=None) -> "SVDTextToVideoPipeline":
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device=device, dtype=dtype)
        return self

    def encode_prompt(self, prompt) -> torch.Tensor:
        """(B, L, hidden) token states of a prompt or list of prompts, in the UNet's dtype."""
        return encode_prompt(self.tokenizer, self.text_encoder, _prompt_list(prompt, "prompt")).to(self.device, self.dtype)

    @torch.inference_mode()
    def __call__(self, prompt, negative_prompt=None, num_videos_per_prompt: int = 1, num_frames: int | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, fps: int | None = None, motion_bucket_id: int | None = None,
                 decode_chunk_size: int | None = None, generator=None, latents: torch.Tensor | None = None,
                 camera="prompt", lead_prompt="auto", lead_sigma: float | None = None, output_type: str = "pil",
                 return_dict: bool = True, **kwargs):
        """Sample videos for a prompt or list of prompts.

        Defaults (None) are the model's sampling defaults (SVDConfig: size, frames, steps, fps, motion
        bucket, guidance). negative_prompt: a string or one per prompt; default the empty prompt,
        the unconditional of classifier-free guidance. guidance_scale <= 1 samples without guidance.
        camera: "prompt" (default) starts each video from noise that moves as the prompt's camera
        words say ("camera pans left", "camera zooms in", ...: camera_start.move_from_text; none or
        "static camera": plain noise; given `latents` are used as they are); a move for every prompt
        (as SVDPipeline's `camera`: "zoom_in", "pan_left:0.04", a CameraMove or a list), drawn the
        same way; None: plain noise always. The moving noise (camera_start.warped_noise, as
        Go-with-the-Flow) is what makes the default text model's camera move: its UNet did not learn
        the camera words (its MODEL_CARD.md).
        lead_prompt: the prompt (a string or one per prompt) that conditions the steps above lead_sigma
        (default: the model's SVDConfig.lead_sigma); "auto" (default): each prompt with its dominant
        colour alone where it names two as the default captioner writes them (dominant_colour_lead;
        the module docstring says why), and nothing when the model has no lead_sigma; None: no lead.
        Other keyword arguments go to SVDPipeline.__call__ (sampler, sigmas, callback_on_step_end, ...).
        """
        prompts = _prompt_list(prompt, "prompt")
        negative = ([""] * len(prompts) if negative_prompt is None
                    else _one_per_prompt(negative_prompt, "negative_prompt", prompts))
        for name in ("image_embeddings", "last_image", "noise_aug_strength", "min_guidance_scale", "max_guidance_scale",
                     "camera_from"):
            if name in kwargs:
                raise TypeError(f"SVDTextToVideoPipeline does not take {name!r}")
        c = self.config
        leads, lead_sigma = self.lead_prompts(lead_prompt, lead_sigma, prompts)
        scale = c.max_guidance_scale if guidance_scale is None else float(guidance_scale)
        height, width, num_frames = height or c.height, width or c.width, num_frames or c.num_frames
        if latents is not None and not (camera is None or camera == "prompt"):
            raise ValueError("camera draws its own moving noise: give latents with camera=None")
        moves = [move for move in self.camera_moves(camera, prompts) for _ in range(num_videos_per_prompt)]
        if latents is None and any(move is not None for move in moves):
            f = self.vae.config.downsample_factor
            shape = (len(moves), num_frames, self.vae.config.latent_channels, height // f, width // f)
            latents = camera_start.camera_noise(moves, shape, generator)
        return super().__call__(
            _Prompts(prompts, negative, leads, lead_sigma), height=height, width=width,
            num_frames=num_frames, num_inference_steps=num_inference_steps or c.num_inference_steps,
            min_guidance_scale=scale, max_guidance_scale=scale, fps=c.fps if fps is None else fps,
            motion_bucket_id=c.motion_bucket_id if motion_bucket_id is None else motion_bucket_id,
            noise_aug_strength=0.0, decode_chunk_size=decode_chunk_size, num_videos_per_prompt=num_videos_per_prompt,
            generator=generator, latents=latents, output_type=output_type, return_dict=return_dict, **kwargs)

    def lead_prompts(self, lead_prompt, lead_sigma, prompts: list[str]) -> tuple[list[str] | None, float | None]:
        """(lead prompts or None, the sigma above which they condition) for __call__'s arguments."""
        sigma = self.config.lead_sigma if lead_sigma is None else lead_sigma
        if lead_prompt is None:
            return None, None
        if sigma is None:
            if isinstance(lead_prompt, str) and lead_prompt == "auto":
                return None, None  # this model has no lead default
            raise ValueError("lead_prompt needs lead_sigma: this model has no default (SVDConfig.lead_sigma)")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (0 <= sigma and math.isfinite(sigma)):
            raise ValueError(f"lead_sigma must be a finite sigma >= 0, got {sigma!r}")
        if isinstance(lead_prompt, str) and lead_prompt == "auto":
            leads = [dominant_colour_lead(p) for p in prompts]
            return (None, None) if leads == prompts else (leads, float(sigma))
        return _one_per_prompt(lead_prompt, "lead_prompt", prompts), float(sigma)

    @staticmethod
    def camera_moves(camera, prompts: list[str]) -> list:
        """One camera move (or None) per prompt for `camera` as __call__ takes it."""
        if camera is None:
            return [None] * len(prompts)
        if isinstance(camera, str) and camera == "prompt":
            return [camera_start.move_from_text(p) for p in prompts]
        return [camera_start.as_move(camera)] * len(prompts)

    def _conditioning(self, image, *, height, width, num_frames, fps, motion_bucket_id, noise_aug_strength, generator,
                      num_videos_per_prompt, image_embeddings=None) -> TextConditioning:
        """The prompts' conditioning, batched like the latents (num_videos_per_prompt per prompt).
        Draws no random numbers: the initial latents are the generator's first draw."""
        context = self.encode_prompt(image.prompt).repeat_interleave(num_videos_per_prompt, dim=0)
        negative = self.encode_prompt(image.negative_prompt).repeat_interleave(num_videos_per_prompt, dim=0)
        batch = context.shape[0]
        f = self.vae.config.downsample_factor
        no_latent = torch.zeros(batch, num_frames, 0, height // f, width // f, device=self.device, dtype=self.dtype)
        ids = conditioner.added_time_ids(fps, motion_bucket_id, 0.0, batch, self.dtype, self.device)
        lead = None
        if image.lead_prompt is not None:
            lead = self.encode_prompt(image.lead_prompt).repeat_interleave(num_videos_per_prompt, dim=0)
        return TextConditioning(no_latent, context, ids, negative_context=negative, lead_context=lead,
                                lead_sigma=image.lead_sigma)
