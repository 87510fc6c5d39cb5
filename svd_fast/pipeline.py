"""Image-to-video sampling: SVDPipeline, with diffusers' StableVideoDiffusionPipeline arguments.

Random numbers are drawn in diffusers' order (noise augmentation of the image first, then the
initial latents), so the same torch.Generator seed gives the same video as diffusers.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from svd_fast import camera_start, conditioner
from svd_fast.accel.memory import release_free_memory
from svd_fast.config import RENDERS, SVDConfig
from svd_fast.consistency import ConsistencySchedule, default_sampler, is_consistency_scheduler
from svd_fast.denoiser import (BidirectionalDenoiser, Conditioning, Denoiser, LinearGuidedDenoiser, SigmaSwitchDenoiser,
                               UnguidedDenoiser)
from svd_fast.layers import channels_last_
from svd_fast.sampling import SAMPLERS, get_sigmas_karras, init_noise_scale

# Sampling defaults of the released scheduler config (svd_facts §5).
DEFAULT_SCHEDULER = {"sigma_min": 0.002, "sigma_max": 700.0}
# The pipeline that samples each SVDConfig.conditioning (variants are configs of one model).
PIPELINES = {"image": "SVDPipeline", "interpolation": "SVDInterpolationPipeline", "text": "SVDTextToVideoPipeline",
             "multiview": "SVDMultiViewPipeline"}


def stage_clock(device: torch.device) -> float:
    """Seconds for the stage timings: CUDA work is asynchronous, so the device is synchronised first
    (once per sampling step: microseconds against a step's tens of milliseconds)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class SVDPipelineOutput:
    """frames: list of lists of PIL images, an array (B, T, H, W, 3) or a tensor (B, T, 3, H, W)."""

    frames: Any
    timings: dict = field(default_factory=dict)


def randn(shape, generator, device, dtype) -> torch.Tensor:
    """Gaussian noise drawn exactly as diffusers' randn_tensor draws it (one generator per sample allowed)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        parts = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.cat(parts).to(device)
    rand_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


class SVDPipeline:
    """Stable Video Diffusion image-to-video pipeline on svd_fast's UNet, VAE and CLIP conditioner."""

    conditioning = "image"
    """the SVDConfig.conditioning this class samples (a subclass per variant: PIPELINES)"""

    def __init__(self, unet, vae, image_encoder, config: SVDConfig, scheduler_config: dict | None = None):
        self.unet, self.vae, self.image_encoder = unet, vae, image_encoder
        self.config = config
        self.scheduler_config = {**DEFAULT_SCHEDULER, **(scheduler_config or {})}
        # A consistency checkpoint (AnimateLCM-SVD, svd_fast.train.distill) samples with its own grid.
        self.default_sampler = default_sampler(scheduler_config)
        self.consistency = ConsistencySchedule.from_scheduler_config(
            self.scheduler_config if is_consistency_scheduler(scheduler_config) else {})
        self.progress = True
        for module in (unet, vae, image_encoder):
            module.eval().requires_grad_(False)
        channels_last_(unet)  # activations are channels-last; see layers.channels_last_
        channels_last_(vae)

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path, torch_dtype=None, device=None, numerics: str = "sgm", use_ema: bool = False,
                        compile: bool = False, cuda_graphs: bool | None = None):
        """Load a diffusers folder or an sgm single-file checkpoint (detected automatically).

        torch_dtype: a torch dtype, None (as stored), or "auto": the fastest dtype this device
        computes natively (svd_fast.accel.dtypes; said once on stdout). compile / cuda_graphs: see
        svd_fast.accel.accelerate.
        """
        from svd_fast.checkpoints import load_components

        if isinstance(torch_dtype, str):
            torch_dtype = _resolve_dtype(torch_dtype, device, path)
        parts = load_components(path, dtype=torch_dtype, device=device, numerics=numerics, use_ema=use_ema)
        pipe = cls(parts["unet"], parts["vae"], parts["image_encoder"], parts["config"], parts.get("scheduler_config"))
        return pipe._accelerated(compile, cuda_graphs)

    @classmethod
    def from_config(cls, config: SVDConfig | str, torch_dtype=None, device=None, seed: int = 0):
        """Random-weight pipeline of a given architecture (tests, benchmarks, training from scratch)."""
        from svd_fast.unet import VideoUNet
        from svd_fast.vae import TemporalVAE

        if isinstance(config, str):
            config = SVDConfig.from_name(config)
        if isinstance(torch_dtype, str):
            torch_dtype = _resolve_dtype(torch_dtype, device)
        torch.manual_seed(seed)
        pipe = cls(VideoUNet(config.unet), TemporalVAE(config.vae), conditioner.build_image_encoder(config.image_encoder), config)
        return pipe.to(device=device, dtype=torch_dtype)

    def _accelerated(self, compile: bool, cuda_graphs: bool | None) -> "SVDPipeline":
        if not compile and cuda_graphs is False:
            return self
        from svd_fast.accel import accelerate

        return accelerate(self, compile=compile, cuda_graphs=cuda_graphs)

    def save_pretrained(self, path, layout: str = "diffusers", overwrite: bool = False) -> None:
        """Write the weights as a diffusers folder or an sgm single .safetensors file (atomic)."""
        from svd_fast.adapters import unet_to_save
        from svd_fast.checkpoints import save_components

        components = {"config": self.config, "unet": unet_to_save(self), "vae": self.vae, "image_encoder": self.image_encoder,
                      "scheduler_config": self.scheduler_config}
        save_components(components, path, layout=layout, overwrite=overwrite)

    def to(self, device=None, dtype=None) -> "SVDPipeline":
        for module in (self.unet, self.vae, self.image_encoder):
            module.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def set_progress_bar_config(self, disable: bool = False):
        self.progress = not disable

    # ---------------------------------------------------------- LoRA adapters (svd_fast.adapters)
    def load_lora_weights(self, path_or_state_dict, adapter_name: str | None = None, scale: float = 1.0) -> str:
        """Add a LoRA (svd_fast file, diffusers / PEFT file or state dict), active at `scale`; its name."""
        from svd_fast import adapters

        return adapters.edit(self, adapters.load_adapter, path_or_state_dict, adapter_name, scale)

    def set_adapters(self, adapter_names, adapter_weights=None) -> None:
        """Exactly these adapters active, each with its weight (their products add up)."""
        from svd_fast import adapters

        adapters.edit(self, adapters.set_adapters, adapter_names, adapter_weights)

    def get_active_adapters(self) -> list[str]:
        from svd_fast import adapters

        return adapters.active_adapters(adapters.plain_unet(self))

    def get_list_adapters(self) -> dict[str, list[str]]:
        from svd_fast import adapters

        return {"unet": adapters.adapter_names(adapters.plain_unet(self))}

    def disable_lora(self) -> None:
        from svd_fast import adapters

        adapters.edit(self, adapters.set_enabled, False)

    def enable_lora(self) -> None:
        from svd_fast import adapters

        adapters.edit(self, adapters.set_enabled, True)

    def delete_adapters(self, adapter_names) -> None:
        from svd_fast import adapters

        adapters.edit(self, adapters.delete_adapters, adapter_names)

    def unload_lora_weights(self) -> None:
        """Remove every adapter (fused ones stay in the weights, as in diffusers)."""
        from svd_fast import adapters

        adapters.edit(self, adapters.unload)

    def fuse_lora(self, lora_scale: float = 1.0) -> None:
        """Fold the active adapters (times lora_scale) into the UNet weights: no per-step adapter cost."""
        from svd_fast import adapters

        adapters.edit(self, adapters.fuse, lora_scale)

    def unfuse_lora(self) -> None:
        from svd_fast import adapters

        adapters.edit(self, adapters.unfuse)

    # ------------------------------------------------------------------------------- the stages
    def encode_image(self, image, height: int, width: int, noise_aug_strength: float, generator, embeddings=None):
        """CLIP embedding (B, 1, D) of the clean image (unless `embeddings` are given) and VAE mean
        latent (B, 4, h, w) of the noise-augmented one, resized to (height, width). Draws the
        augmentation noise first."""
        if embeddings is None:
            embeddings = conditioner.encode_image(self.image_encoder, image)
        embeddings = embeddings.to(self.device, self.dtype)
        pixels = conditioner.preprocess_image(image, height, width).to(self.device)
        pixels = pixels + noise_aug_strength * randn(pixels.shape, generator, self.device, pixels.dtype)
        return embeddings, self.vae.encode(pixels).to(self.dtype)

    def default_image_init_sigma(self, sampler: str | None = None, render: str | None = None) -> float | None:
        """The model's saved image_init_sigma, or None (pure noise) under the consistency sampler (a
        student's defaults start from pure noise; an image model's default start is not its) and
        when rendering from the input (`render`, default the model's, 'warp': the render keeps the
        input's pixels, so it takes the model's whole motion, which a start from the noised image
        holds back: on the default model's held-out photos 0.69 px/frame from pure noise against
        0.27 from sigma 6, svd_fast.motion_render)."""
        if (sampler or self.default_sampler) == "consistency" or (render or self.config.render) == "warp":
            return None
        return self.config.image_init_sigma

    def saved_sampling(self) -> dict:
        """The model's saved sampler settings (svd_fast_sampling.json) as call arguments, resolved as the
        CLI resolves them when no flag is given: steps, guidance, start, first-frame hold and render."""
        cfg = self.config
        return dict(num_inference_steps=cfg.num_inference_steps, max_guidance_scale=cfg.max_guidance_scale,
                    image_init_sigma=self.default_image_init_sigma(), keep_first_frame=cfg.keep_first_frame,
                    render=cfg.render)

    def still_latents(self, image, height: int, width: int) -> torch.Tensor:
        """Scaled VAE mean latent (B, C, h, w), fp32, of the clean image resized to (height, width):
        the latent of the video that would hold this image still."""
        pixels = conditioner.preprocess_image(image, height, width).to(self.device, self.dtype)
        return self.vae.encode(pixels).float() * self.vae.config.scaling_factor

    def moved_latents(self, image, move, num_frames: int, height: int, width: int) -> torch.Tensor:
        """Scaled VAE mean latents (B, T, C, h, w), fp32, of the image moved by k steps of the camera
        `move` in frame k (svd_fast.camera_start.moved_frames); frame 0 is still_latents'."""
        pixels = conditioner.preprocess_image(image, height, width).to(self.device, self.dtype)
        frames = camera_start.moved_frames(pixels, move, num_frames)
        latents = self.vae.encode(frames.flatten(0, 1)).float() * self.vae.config.scaling_factor
        return latents.unflatten(0, frames.shape[:2])

    def decode(self, latents, decode_chunk_size: int):
        """Frames (B, T, 3, H, W) in [-1, 1], fp32, from sampler latents (B, T, 4, h, w).

        Chunks run over the flattened B*T frames like diffusers' decode_latents; each chunk is
        decoded as a clip of its own length.
        """
        b, t = latents.shape[:2]
        z = latents.flatten(0, 1) / self.vae.config.scaling_factor
        starts = range(0, z.shape[0], decode_chunk_size)
        chunks = [
            self.vae.decode(z[i : i + decode_chunk_size], num_frames=len(z[i : i + decode_chunk_size])).float()
            for i in tqdm(starts, desc="decode", disable=not self.progress, leave=False)
        ]
        frames = torch.cat(chunks)
        return frames.reshape(b, t, *frames.shape[1:])

    # -------------------------------------------------------------------------------- __call__
    @torch.inference_mode()
    def __call__(
        self,
        image,
        height: int = 576,
        width: int = 1024,
        num_frames: int | None = None,
        num_inference_steps: int = 25,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 3.0,
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.02,
        decode_chunk_size: int | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
        sampler: str | None = None,
        sigmas: list[float] | torch.Tensor | None = None,
        eta: float = 1.0,
        image_embeddings: torch.Tensor | None = None,
        last_image=None,
        image_init_sigma: float | None = None,
        keep_first_frame: bool = False,
        render: str = "frames",
        prior_noise: float = 1.0,
        camera=None,
        camera_from: str = "image",
        return_dict: bool = True,
    ):
        """Sample a video from a conditioning image (PIL, array or tensor; a list or batch of them).

        Arguments and defaults follow diffusers' StableVideoDiffusionPipeline; `fps` is the frame
        rate (the model sees fps - 1). Extra: `sampler` ('euler', 'heun', 'dpmpp_2m', 'consistency';
        default: the checkpoint's, 'consistency' for AnimateLCM-SVD-style checkpoints and svd_fast's
        distilled students, else 'euler'), explicit `sigmas` (descending, ending in 0) and `eta`
        (consistency sampler: 1 re-noises with fresh noise between steps, 0 deterministically),
        `image_embeddings` (B, 1, D) to condition cross-attention on instead of the image's own
        CLIP embedding (svd_fast.long_video keeps the input image's for every chunk), and
        `last_image`: the video's last frame, for training-free interpolation with any image-to-video
        model (BidirectionalDenoiser: the video conditioned on `image` and the time-reversed video
        conditioned on `last_image`, fused at every step).
        Two ways to keep the input image (image models only):
        `image_init_sigma`: start every frame from the image's latent noised to this sigma instead
        of pure noise at sigma_max, the schedule running from there down (SDEdit, Meng et al. 2022):
        lower keeps more of the image, higher allows more motion (a consistency student starts at
        its first training-grid point at or below it). `keep_first_frame`: replace
        frame 0 after every step by the image's latent noised to the step's sigma with that
        frame's own initial noise (imputation by replacement, Song et al. 2021), so the first
        frame is the image through the VAE and the other frames are denoised around it.
        `render`: 'frames' returns the model's frames; 'warp' returns the input image moved by the
        camera motion of those frames (svd_fast.motion_render: an affine map per frame fitted to
        their optical flow to frame 0, smoothed over time): the model's motion with the input's
        pixels, for models that redraw their later frames instead of moving them (image models,
        without last_image).
        `camera` (image models, without last_image): a camera move ('zoom_in', 'pan_left:0.02', a
        svd_fast.camera_start.CameraMove or a list of them): frame k starts from the image moved by k
        steps of it, noised to `image_init_sigma` (default camera_start.START_SIGMA), training-free
        camera control as CamTrol does (svd_fast.camera_start). `camera_from='noise'` instead samples
        from pure noise that moves with the camera (camera_start.warped_noise), as Go-with-the-Flow.
        `prior_noise` (models with a latent prior, UNetConfig.latent_prior): the sampler starts at the
        prior mu plus this times the initial noise; 0 starts at mu itself, a deterministic estimate
        (SVD-FI's default, SVDConfig.prior_noise).
        """
        if self.config.conditioning != self.conditioning:  # e.g. an SVD-FI model called as image-to-video
            raise ValueError(f"this model's conditioning is {self.config.conditioning!r}: sample it with "
                             f"{PIPELINES[self.config.conditioning]}, not {type(self).__name__}")
        sampler = sampler if sampler is not None else self.default_sampler
        num_frames = num_frames if num_frames is not None else self.unet.config.num_frames
        decode_chunk_size = decode_chunk_size if decode_chunk_size is not None else num_frames
        self._check_arguments(height, width, num_frames, num_inference_steps, decode_chunk_size, output_type, sampler)
        self._check_render(render, output_type, last_image)
        if num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be >= 1, got {num_videos_per_prompt}")
        timings: dict = {}
        device = self.device
        clock = functools.partial(stage_clock, device)

        start = clock()
        conditioning = functools.partial(self._conditioning, height=height, width=width, num_frames=num_frames, fps=fps,
                                         motion_bucket_id=motion_bucket_id, noise_aug_strength=noise_aug_strength,
                                         generator=generator, num_videos_per_prompt=num_videos_per_prompt)
        cond = conditioning(image, image_embeddings=image_embeddings)
        last_cond = conditioning(last_image) if last_image is not None else None
        timings["image_encode"] = clock() - start
        batch = cond.image_latents.shape[0]
        if image_init_sigma is not None and sigmas is not None:
            raise ValueError("give either sigmas or image_init_sigma (it sets the schedule's start), not both")
        move = None
        if camera_from not in ("image", "noise"):
            raise ValueError(f"camera_from must be 'image' or 'noise', got {camera_from!r}")
        if camera is not None:
            if self.conditioning != "image" or last_image is not None or sigmas is not None:
                raise ValueError("camera needs an image model's pipeline, without last_image and sigmas "
                                 "(image_init_sigma sets its start)")
            move = camera_start.as_move(camera)
            if camera_from == "noise" and (image_init_sigma is not None or latents is not None):
                raise ValueError("camera_from='noise' samples from its own pure noise: not with image_init_sigma or latents")
            if camera_from == "image":
                image_init_sigma = camera_start.START_SIGMA if image_init_sigma is None else image_init_sigma
        sigma_schedule = self._sigmas(num_inference_steps, sigmas, sampler, start=image_init_sigma).to(device)
        f = self.vae.config.downsample_factor
        shape = (batch, num_frames, self.vae.config.latent_channels, height // f, width // f)
        if move is not None and camera_from == "noise":
            latents = camera_start.camera_noise([move] * batch, shape, generator).to(device, self.dtype)
        if latents is None:
            latents = randn(shape, generator, device, self.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        noise = latents.to(device).float()
        still = None
        if image_init_sigma is not None or keep_first_frame:
            if self.conditioning != "image" or last_image is not None and image_init_sigma is not None:
                raise ValueError("image_init_sigma and keep_first_frame need an image model's pipeline "
                                 "(image_init_sigma: without last_image)")
            still = self.still_latents(image, height, width).repeat_interleave(num_videos_per_prompt, dim=0)
        if move is not None and camera_from == "image":
            moved = self.moved_latents(image, move, num_frames, height, width).repeat_interleave(num_videos_per_prompt, dim=0)
            x = (moved + sigma_schedule[0] * noise).to(self.dtype)
        elif image_init_sigma is not None:
            x = (still[:, None] + sigma_schedule[0] * noise).to(self.dtype)
        else:
            x = latents.to(device) * init_noise_scale(sigma_schedule)
        if keep_first_frame:
            x[:, 0] = (still + sigma_schedule[0] * noise[:, 0]).to(x.dtype)

        consistency = sampler == "consistency"
        denoiser = Denoiser(self.unet, boundary_sigma=self.consistency.boundary_sigma if consistency else None)
        prior = denoiser.prior(cond)
        if prior is None and prior_noise != 1:
            raise ValueError(f"prior_noise={prior_noise} needs a model with a latent prior; this one starts from pure noise")
        if prior is not None:  # noise around the prior the model corrects (svd_fast.denoiser), not around 0
            if not prior_noise >= 0:
                raise ValueError(f"prior_noise must be >= 0, got {prior_noise}")
            x = (prior + prior_noise * x.float()).to(self.dtype)

        def guided(cond):
            if max_guidance_scale > 1:
                return LinearGuidedDenoiser(denoiser, cond, min_guidance_scale, max_guidance_scale, num_frames)
            return UnguidedDenoiser(denoiser, cond)

        denoise = guided(cond)
        lead = getattr(cond, "lead", None)  # a text model's lead prompt: the high-noise steps (svd_fast.text_to_video)
        if lead is not None:
            denoise = SigmaSwitchDenoiser(guided(lead), denoise, cond.lead_sigma)
        if last_cond is not None:
            denoise = BidirectionalDenoiser(denoise, guided(last_cond), num_frames)

        steps = len(sigma_schedule) - 1
        bar = tqdm(total=steps, desc="denoise", disable=not self.progress, leave=False)
        step_times: list[float] = []
        step_start = [clock()]
        feature_cache = getattr(self.unet, "feature_cache", None)  # svd_fast.accel.feature_cache follows the run
        if feature_cache is not None:
            feature_cache.start_run(steps)

        def on_step(i, x_next, denoised):
            if keep_first_frame:
                x_next[:, 0] = (still + sigma_schedule[i + 1] * noise[:, 0]).to(x_next.dtype)
            step_times.append(clock() - step_start[0])
            bar.update()
            if feature_cache is not None:
                feature_cache.at_step(i + 1)
            if callback_on_step_end is not None:
                values = {"latents": x_next, "denoised": denoised}
                out = callback_on_step_end(self, i, sigma_schedule[i], {k: values[k] for k in callback_on_step_end_tensor_inputs})
                if out and "latents" in out:
                    x_next.copy_(out["latents"])
            step_start[0] = clock()

        run = SAMPLERS[sampler]
        if consistency:  # its re-noising draws come after the initial latents, from the same generator(s)
            run = functools.partial(run, noise=lambda shape: randn(shape, generator, device, torch.float32), eta=eta,
                                    s_noise=self.consistency.s_noise, clip_denoised=self.consistency.clip_denoised)
        x = run(denoise, x, sigma_schedule, callback=on_step)
        bar.close()
        timings["unet_steps"] = step_times

        if output_type == "latent":
            frames = x.to(self.dtype)
        else:
            if device.type == "cpu":
                release_free_memory()  # the UNet steps' freed heap, before the decoder's peak (accel/memory.py)
            start = clock()
            video = self.decode(x.to(self.dtype), decode_chunk_size)
            timings["vae_decode"] = clock() - start
            if render == "warp":
                start = clock()
                video = self.render_from_image(video, image, num_videos_per_prompt)
                timings["render"] = clock() - start
            frames = postprocess_video(video, output_type)
        if not return_dict:
            return frames
        return SVDPipelineOutput(frames=frames, timings=timings)

    def _check_render(self, render: str, output_type: str, last_image) -> None:
        if render not in RENDERS:
            raise ValueError(f"render must be one of {RENDERS}, got {render!r}")
        if render == "warp" and (self.conditioning != "image" or last_image is not None):
            raise ValueError("render='warp' moves the input image: it needs an image model's pipeline, without last_image")
        if render == "warp" and output_type == "latent":
            raise ValueError("render='warp' makes pixels: it cannot return latents (output_type='latent')")

    def render_from_image(self, video: torch.Tensor, image, num_videos_per_prompt: int) -> torch.Tensor:
        """video (B, T, 3, H, W) in [-1, 1] -> the input image(s) moved by its camera motion, same layout."""
        from svd_fast.motion_render import render_batch

        h, w = video.shape[-2:]
        pixels = (conditioner.preprocess_image(image, h, w).float() + 1) / 2
        pixels = pixels.clamp(0, 1).repeat_interleave(num_videos_per_prompt, dim=0)
        return render_batch((video / 2 + 0.5).clamp(0, 1), pixels) * 2 - 1

    def _conditioning(self, image, *, height, width, num_frames, fps, motion_bucket_id, noise_aug_strength, generator,
                      num_videos_per_prompt, image_embeddings=None) -> Conditioning:
        """The image's conditioning, batched like the latents (num_videos_per_prompt per image)."""
        embeddings, image_latents = self.encode_image(image, height, width, noise_aug_strength, generator, image_embeddings)
        embeddings = embeddings.repeat_interleave(num_videos_per_prompt, dim=0)
        image_latents = image_latents.repeat_interleave(num_videos_per_prompt, dim=0)
        batch = image_latents.shape[0]
        return Conditioning(
            image_latents=image_latents.unsqueeze(1).repeat(1, num_frames, 1, 1, 1),
            context=embeddings,
            added_time_ids=conditioner.added_time_ids(fps, motion_bucket_id, noise_aug_strength, batch, self.dtype,
                                                      self.device),
        )

    def _sigmas(self, steps: int, sigmas, sampler: str, start: float | None = None) -> torch.Tensor:
        """The sampler's noise levels: explicit `sigmas`, else the consistency grid or Karras's
        schedule from sigma_max (from `start` when given: image-initialised sampling; a consistency
        student from its first grid point at or below `start`)."""
        sigma_min, sigma_max = self.scheduler_config["sigma_min"], self.scheduler_config["sigma_max"]
        if start is not None:
            if not (math.isfinite(start) and sigma_min < start <= sigma_max):
                raise ValueError(f"image_init_sigma must be in ({sigma_min}, {sigma_max}], got {start}")
            if sampler == "consistency":  # a student is asked only its grid points: the first one <= start
                return self.consistency.sigmas(steps, start=start)
            return get_sigmas_karras(steps, sigma_min, start)
        if sigmas is None and sampler == "consistency":
            return self.consistency.sigmas(steps)
        if sigmas is None:
            return get_sigmas_karras(steps, sigma_min, sigma_max)
        sigmas = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
        if len(sigmas) < 2 or sigmas[-1] != 0 or (sigmas[1:] >= sigmas[:-1]).any():
            raise ValueError("sigmas must be strictly decreasing and end with 0")
        return sigmas

    @staticmethod
    def _check_arguments(height, width, num_frames, steps, chunk, output_type, sampler):
        if height % 8 or width % 8 or height < 8 or width < 8:
            raise ValueError(f"height and width must be positive multiples of 8, got {height}x{width}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
        if chunk < 1:
            raise ValueError(f"decode_chunk_size must be >= 1, got {chunk}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")


def _resolve_dtype(spec: str, device, path=None) -> torch.dtype:
    """A dtype name or "auto" (reported once) -> torch dtype; auto on CUDA keeps a bf16 checkpoint bf16."""
    from svd_fast.accel.dtypes import report_once, resolve_dtype

    dtype, why = resolve_dtype(spec, device or "cpu", _stored_dtype(path) if path is not None else None)
    if spec == "auto":
        report_once(dtype, why)
    return dtype


def _stored_dtype(path) -> torch.dtype | None:
    """dtype of the UNet weights in a checkpoint (safetensors header only), None if unknown."""
    from pathlib import Path

    from svd_fast.checkpoints.io import CheckpointError, read_safetensors_header

    path = Path(path)
    files = sorted((path / "unet").glob("*.safetensors")) if path.is_dir() else [path]
    if not files or files[0].suffix != ".safetensors":
        return None
    try:
        header = read_safetensors_header(files[0])[0]
    except (CheckpointError, OSError):  # unreadable header: the loader reports it properly
        return None
    names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    dtypes = [v.get("dtype") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    return names.get(max(set(dtypes), key=dtypes.count)) if dtypes else None


def postprocess_video(video: torch.Tensor, output_type: str):
    """(B, T, 3, H, W) in [-1, 1] -> diffusers' output formats, values in [0, 1]."""
    video = (video / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return video
    array = video.permute(0, 1, 3, 4, 2).cpu().float().numpy()
    if output_type == "np":
        return array
    from PIL import Image

    return [[Image.fromarray((frame * 255).round().astype(np.uint8)) for frame in clip] for clip in array]
