"""SVD-FI: the frame-interpolation variant of the one VideoUNet (paper section 4.4, appendix D.5).

A clip of T frames (the paper: 5, i.e. 3 new frames between two, 4x the frame rate) is conditioned on
its first and last frame. What the UNet sees (SVDConfig.conditioning = "interpolation",
UNetConfig.mask_embedding = True, in_channels = 2 * C + 1 for C latent channels):

    channels [0, C)       the noisy latents, scaled by c_in (as for image-to-video)
    channels [C, 2C)      the conditioning latents [z_s, z_m, ..., z_m, z_e]
    channel  2C           the binary mask [1, 0, ..., 0, 1] (1 = a conditioning frame)
    cross-attention       the CLIP image embeddings of the first and the last frame: 2 tokens
    vector                [fps - 1, motion bucket, sigma_aug], as for image-to-video

Decisions where the paper is vague (written here and in the model card):
- z_m is one learned value per latent channel, broadcast over space (a resolution-free choice; the
  paper gives no shape). It lives in the UNet (parameter `mask_embedding`) and the UNet puts it in
  wherever the mask is 0, so callers (this module, training) pass zeros for the missing frames.
- z_s and z_e are the VAE means of the end frames without the latent scaling factor (as SVD's
  conditioning latent), noise-augmented in latent space (the paper: "noise augmentation is applied
  to the conditioning frames in latent space") with sigma_aug = noise_aug_strength at sampling.
- The unconditional branch of guidance (and condition dropout in training) zeroes the CLIP tokens
  and the conditioning latents including the mask, so every frame gets z_m: "nothing is known".
- All T frames are noised and denoised, the end frames included (the paper's "5 output frames");
  training puts the loss on all of them (svd_fast.train.objective), so the noisy end frames the
  sampler feeds back stay on the training distribution.

svd_fast's addition, not the paper's: UNetConfig.latent_prior > 0 makes the denoiser correct a prior
clip mu instead of drawing the clip from zero (svd_fast.denoiser). A small UNet redraws a picture from
concatenated latents only roughly; with a prior as its start it keeps what the ends already say.
mu's in-between frames are the ends interpolated by optical flow (`prior="flow"`, the default for
such models: flow_interpolate of the two ends at the model's size, through the VAE; the shipped
interpolator is trained on that prior, svd_fast.train.interpolation) or the linear blend in time of
the two end latents (`prior="blend"`, what v1/v2 were trained on). With the flow prior the decoded
clip also gets back what the VAE loses of each prior frame (pin_ends), so where the model leaves the
prior alone the output is the flow interpolation itself, not its VAE round trip. A model without a
prior samples as the paper's. With UNetConfig.prior_conditioning (the shipped interpolator, since v4)
the UNet also sees that prior: the missing frames' conditioning slots hold the prior's latents plus z_m
instead of z_m alone (svd_fast.denoiser.Denoiser.conditioning_latents), so it can see where the flow frames ghost.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from svd_fast import conditioner
from svd_fast.denoiser import Conditioning, latent_prior
from svd_fast.pipeline import SVDPipeline, postprocess_video, randn


def interpolation_latents(first: torch.Tensor, last: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The concatenated conditioning (B, T, C + 1, h, w) from the end frames' latents (B, C, h, w):
    latents [first, 0, ..., 0, last] (the UNet puts z_m where the mask is 0) and the mask [1, 0, ..., 0, 1]."""
    if num_frames < 2:
        raise ValueError(f"interpolation needs num_frames >= 2 (both ends), got {num_frames}")
    if first.shape != last.shape:
        raise ValueError(f"first and last latents differ in shape: {tuple(first.shape)} vs {tuple(last.shape)}")
    b, c, h, w = first.shape
    out = first.new_zeros(b, num_frames, c + 1, h, w)
    out[:, 0, :c], out[:, -1, :c] = first, last
    out[:, 0, c] = 1
    out[:, -1, c] = 1
    return out


def interpolation_context(first_embedding: torch.Tensor, last_embedding: torch.Tensor) -> torch.Tensor:
    """Cross-attention context (B, 2, D): the CLIP embeddings (B, 1, D) of the first and the last frame."""
    return torch.cat([first_embedding, last_embedding], dim=1)


def model_conditioning(path) -> str:
    """SVDConfig.conditioning of a checkpoint (diffusers folder or sgm file), read without its weights."""
    from pathlib import Path

    from svd_fast.checkpoints import diffusers as diffusers_layout
    from svd_fast.checkpoints import sgm
    from svd_fast.checkpoints.components import detect_layout
    from svd_fast.checkpoints.io import open_tensors

    path = Path(path)
    if detect_layout(path) == "diffusers":
        return diffusers_layout.read_config(path, "sgm")[0].conditioning
    return sgm.read_config(open_tensors(path), "sgm").conditioning


def motion_bucket_from_ends(first, last, num_frames: int) -> float:
    """The motion micro-conditioning an interpolation call can observe: the mean optical flow from
    the first to the last frame (H, W, 3 arrays in [0, 1]) spread over the num_frames - 1 steps
    between them, as a bucket (svd_fast.train.data.motion_bucket; training conditions on the clip's
    measured per-frame flow, which a steady motion makes equal)."""
    from svd_fast.train.data import motion_bucket
    from svd_fast.train.video_metrics import mean_flow

    video = np.stack([np.asarray(first, np.float32), np.asarray(last, np.float32)])
    return motion_bucket(mean_flow(video) / (num_frames - 1), video.shape[1])


FLOW = dict(pyr_scale=0.5, levels=4, winsize=15, iterations=5, poly_n=5, poly_sigma=1.1, flags=0)
"""Farneback settings for pictures several frames apart (svd_fast.train.video_metrics' with a wider
window and one more level; svd_fast.long_video's detail transfer)"""

FLOW_MIN_SIDE = 128
"""optical_flow upsamples smaller pictures to this short side: DIS's patches are 8 px, too coarse for
a 64 px frame (held-out clips at 64 px, in-between PSNR: DIS at 2x 25.90 / 31.83 / 35.19 dB, at 1x
25.65 / 31.64 / 35.14, Farneback 25.35 / 31.71 / 35.05; procedural / photo pans / real footage)"""

INTERPOLATION_FLOW = dict(min_side=256, patch_size=4, patch_stride=1, finest_scale=1, refinement_iterations=10)
"""flow_interpolate's DIS settings: finer than optical_flow's defaults (the medium preset at 128 px,
8 px patches every 4 px), for pictures several frames apart. Chosen on validation clips (24 procedural,
indices HELD_OUT + 3000.., and 12 pans over 4 training photos; never the held-out ones; 2026-12-04, mean
in-between PSNR): medium at 128 px 32.40 dB procedural; 4 px patches every 2 px at 256 px 32.82 / 29.92
(procedural / pans), every 1 px (these) 33.41 / 29.92; finest scale 0 33.43 / 29.95 (2x the time); 6 / 8 px
patches 32.48 / 29.54 and 33.32 / 29.60; variational alpha 5 / 40 33.13 / 29.81 and 32.52 / 29.81. On the
held-out clips these score 26.25 / 32.41 / 35.21 dB against 25.90 / 31.83 / 35.19 for optical_flow's
defaults (procedural / photo pans / real footage) on grey levels; fused_flow over colour channels: 27.97 / 33.12 / 35.21. About 11 ms a pair at 64 px."""


def optical_flow(a: np.ndarray, b: np.ndarray, min_side: int = FLOW_MIN_SIDE, patch_size: int | None = None,
                 patch_stride: int | None = None, finest_scale: int | None = None,
                 refinement_iterations: int | None = None) -> np.ndarray:
    """Dense flow (H, W, 2) from picture a to picture b ((H, W) uint8 grey levels) in a's pixels:
    a(p) ~ b(p + flow(p)). OpenCV's DIS (Kroeger et al. 2016, medium preset; the other arguments
    override it) on the pictures upsampled to `min_side`, the flow brought back to a's size."""
    import cv2

    h, w = a.shape
    up = max(1, -(-min_side // min(h, w)))
    if up > 1:
        a, b = (cv2.resize(x, (w * up, h * up), interpolation=cv2.INTER_CUBIC) for x in (a, b))
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    if patch_size is not None:
        dis.setPatchSize(patch_size)
    if patch_stride is not None:
        dis.setPatchStride(patch_stride)
    if finest_scale is not None:
        dis.setFinestScale(finest_scale)
    if refinement_iterations is not None:
        dis.setVariationalRefinementIterations(refinement_iterations)
    flow = dis.calc(a, b, None)
    if up > 1:
        flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_AREA) / up
    return flow


FLOW_CHANNELS = ("grey", "red", "green", "blue")
"""fused_flow's candidate flows: DIS on each of these pictures of the two colour images. Grey levels
alone lose edges between colours of one brightness (a purple shape over green texture), where DIS then
follows the background; one of the colour channels keeps them"""

FUSION_WINDOW = 0.25
"""fused_flow picks per pixel the candidate whose warp matches best over a box of this fraction of the
short side (17 px at 64 px). Chosen with FLOW_CHANNELS on validation clips (24 procedural, indices
HELD_OUT + 3000.., and 12 pans over 4 training photos; 2026-12-04, mean in-between PSNR of flow_interpolate):
grey alone 33.41 / 29.92 dB (procedural / pans); grey, R, G, B with 5 / 9 / 13 / 17 / 25 px boxes 33.84 /
33.94 / 33.98 / 34.01 / 33.95 and 29.93; 1 px (per pixel) 33.62; R, G, B without grey (9 px) 33.85; L, a, b
(5 px) 33.66; grey, R, G, B, a, b (13 / 17 px) 34.05 / 34.08 for 1.5x the flows. Held-out: 26.25 / 32.41 /
35.21 dB with grey alone, 27.97 / 33.12 / 35.21 fused (procedural / photo pans / real footage)"""


def _flow_pictures(image: np.ndarray) -> list[np.ndarray]:
    """The FLOW_CHANNELS pictures (H, W) uint8 of an (H, W, 3) image in [0, 1], in that order."""
    import cv2

    pixels = (image * 255).round().astype(np.uint8)
    return [cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)] + [np.ascontiguousarray(pixels[..., c]) for c in range(3)]


def warp_by_flow(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """image (H, W, C) float32 sampled at p + flow(p) (bilinear, edges replicated)."""
    import cv2

    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(image, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def fused_flow(a: np.ndarray, b: np.ndarray, **dis_settings) -> np.ndarray:
    """Dense flow (H, W, 2) from colour image a to b ((H, W, 3) float32 in [0, 1]), a(p) ~ b(p + flow(p)):
    optical_flow (with `dis_settings`) on each FLOW_CHANNELS picture, and at each pixel the candidate
    whose warp of b matches a best in colour (sum of absolute differences over a FUSION_WINDOW box):
    fusion of candidate flows by their photometric error, as flow fusion methods do (Lempitsky et al. 2008)
    with a winner-take-all choice."""
    import cv2

    candidates = [optical_flow(x, y, **dis_settings) for x, y in zip(_flow_pictures(a), _flow_pictures(b))]
    box = max(3, round(min(a.shape[:2]) * FUSION_WINDOW) | 1)
    errors = np.stack([cv2.blur(np.abs(a - warp_by_flow(b, f)).sum(-1), (box, box)) for f in candidates])
    best = errors.argmin(0)
    return np.take_along_axis(np.stack(candidates), best[None, ..., None], 0)[0]


def flow_interpolate(first, last, num_frames: int) -> np.ndarray:
    """num_frames frames (T, H, W, 3) from `first` to `last` ((H, W, 3) arrays in [0, 1]; both ends
    included, exactly) by optical flow, no model: flow from each end to the other (fused_flow with
    INTERPOLATION_FLOW), the flow from time t to either end approximated from those two as Super
    SloMo does (Jiang et al. 2018, eq. 4), both ends warped to t (bilinear, edges replicated) and
    blended (1 - t, t). Good for small, smooth motion at any resolution; occlusions and large motions
    ghost like a blend."""
    if num_frames < 2:
        raise ValueError(f"interpolation needs num_frames >= 2 (both ends), got {num_frames}")
    first, last = (np.ascontiguousarray(np.clip(x, 0, 1), dtype=np.float32) for x in (first, last))
    if first.shape != last.shape or first.ndim != 3 or first.shape[-1] != 3:
        raise ValueError(f"first and last must be (H, W, 3) images of one size, got {first.shape} and {last.shape}")
    f01, f10 = fused_flow(first, last, **INTERPOLATION_FLOW), fused_flow(last, first, **INTERPOLATION_FLOW)
    frames = [first]
    for k in range(1, num_frames - 1):
        t = k / (num_frames - 1)
        to_first = -(1 - t) * t * f01 + t * t * f10
        to_last = (1 - t) ** 2 * f01 - t * (1 - t) * f10
        frames.append(np.clip((1 - t) * warp_by_flow(first, to_first) + t * warp_by_flow(last, to_last), 0, 1))
    return np.stack(frames + [last])


def pin_to_ends(video: torch.Tensor, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """video (B, T, 3, H, W) in [0, 1] plus the time-blended residuals of its ends against the true
    end frames first / last (B, 3, H, W): frame 0 becomes `first`, frame T-1 `last` (clamped to [0, 1])."""
    t = video.shape[1]
    a = torch.linspace(0, 1, t, device=video.device).reshape(1, t, 1, 1, 1)
    residual_first = (first.to(video) - video[:, 0])[:, None]
    residual_last = (last.to(video) - video[:, -1])[:, None]
    return (video + (1 - a) * residual_first + a * residual_last).clamp(0, 1)


class SVDInterpolationPipeline(SVDPipeline):
    """Frames between a first and a last image with an SVD-FI model (SVDConfig.conditioning 'interpolation').

    Loads like SVDPipeline (from_pretrained: diffusers folder or sgm file) and shares its sampler,
    guidance and decode; only the conditioning differs (module docstring).
    """

    conditioning = "interpolation"

    def __call__(self, image, last_image, height: int | None = None, width: int | None = None,
                 num_frames: int | None = None, num_inference_steps: int | None = None, min_guidance_scale: float = 1.0,
                 max_guidance_scale: float | None = None, fps: int | None = None, motion_bucket_id: int | None = None,
                 noise_aug_strength: float = 0.02, decode_chunk_size: int | None = None, num_videos_per_prompt: int = 1,
                 generator=None, latents=None, output_type: str = "pil", callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), sampler: str | None = None, sigmas=None,
                 eta: float = 1.0, pin_ends: bool = True, prior: str | None = None, prior_noise: float | None = None,
                 return_dict: bool = True):
        """num_frames frames from `image` (first) to `last_image` (last), both ends included. Arguments
        as SVDPipeline's (diffusers' names); those left None take the model's sampling defaults
        (SVDConfig: size, frames, steps, fps, motion bucket, guidance). Random numbers: the first
        end's latent augmentation, the last end's, then the initial latents.

        pin_ends (svd_fast's addition, not the paper's): the decoded frames are corrected by the
        VAE's error on what is known. With the flow prior, frame t first gets flow_t - decode(encode(flow_t))
        for the prior's frame flow_t (the VAE's loss on the flow interpolation: the output is the flow
        frame plus the model's decoded correction of it). Then, always, the ends' errors blended over
        time: frame t gets (1 - a_t) (first - decoded frame 0) + a_t (last - decoded last frame),
        a_t = t / (T - 1), so the ends come out exactly as given (no flicker at the keyframes of a whole
        video). False returns the decoded frames as they are.

        prior (models with a latent prior, UNetConfig.latent_prior): what the model corrects in the
        in-between frames: "flow" (default) the ends interpolated by optical flow (flow_interpolate at
        the model's size, through the VAE), "blend" the linear blend of the end latents it was trained on.
        Held-out clips, shipped v5: flow 27.82 / 32.90 / 34.97 dB against blend 24.24 / 24.11 / 34.18
        (procedural / photo pans / real footage, README Benchmarks).

        prior_noise (models with a latent prior): the initial noise around the prior, times this
        (SVDPipeline.__call__); None takes the model's sampling default (SVDConfig.prior_noise; the
        shipped interpolator's is 0: it starts at the prior itself)."""
        if last_image is None:
            raise ValueError("SVDInterpolationPipeline needs last_image (the clip's last frame)")
        if prior not in (None, "flow", "blend"):
            raise ValueError(f"prior must be 'flow' or 'blend', got {prior!r}")
        if prior is not None and not self.unet.config.latent_prior:
            raise ValueError(f"prior={prior!r} needs a model with a latent prior (unet config svd_fast_latent_prior); "
                             "this one denoises from zero")
        cfg = self.config
        height, width = height or cfg.height, width or cfg.width
        num_frames = num_frames or cfg.num_frames
        pin = pin_ends and output_type != "latent"
        flow = None  # the flow prior's frames (B, T, 3, H, W) in [0, 1] and their VAE means
        if (prior or "flow") == "flow" and self.unet.config.latent_prior:
            flow = self.flow_frames(image, last_image, height, width, num_frames)
            flow_means = self.vae.encode(flow.flatten(0, 1).to(self.device, self.dtype) * 2 - 1).float()
            flow_means = flow_means.reshape(*flow.shape[:2], *flow_means.shape[1:])
        out = super().__call__(
            (image, last_image, None if flow is None else flow_means), height=height, width=width, num_frames=num_frames,
            num_inference_steps=num_inference_steps or cfg.num_inference_steps, min_guidance_scale=min_guidance_scale,
            max_guidance_scale=cfg.max_guidance_scale if max_guidance_scale is None else max_guidance_scale,
            fps=fps or cfg.fps, motion_bucket_id=cfg.motion_bucket_id if motion_bucket_id is None else motion_bucket_id,
            noise_aug_strength=noise_aug_strength, decode_chunk_size=decode_chunk_size,
            num_videos_per_prompt=num_videos_per_prompt, generator=generator, latents=latents,
            output_type="latent" if pin else output_type, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, sampler=sampler, sigmas=sigmas,
            eta=eta, prior_noise=cfg.prior_noise if prior_noise is None else prior_noise, return_dict=True)
        if pin:  # decoded here: the corrections below need the decoder's frames before any clamping
            start = time.perf_counter()
            video = (self.decode(out.frames, decode_chunk_size or num_frames) + 1) / 2
            if flow is not None:  # the VAE's error on each prior frame, put back (module docstring)
                prior_decoded = (self.decode(flow_means * self.unet.config.latent_prior,  # mu of svd_fast.denoiser
                                             decode_chunk_size or num_frames) + 1) / 2
                error = (flow.to(prior_decoded) - prior_decoded).repeat_interleave(num_videos_per_prompt, 0)
                video = video + error.to(video.device)
            video = pin_to_ends(video, *(
                ((conditioner.preprocess_image(x, height, width) + 1) / 2).repeat_interleave(num_videos_per_prompt, 0)
                for x in (image, last_image)))
            out.frames = postprocess_video(video * 2 - 1, output_type)
            out.timings["vae_decode"] = time.perf_counter() - start
        return out if return_dict else out.frames

    def encode_end(self, image, height: int, width: int, noise_aug_strength: float, generator):
        """CLIP embedding (B, 1, D) of the clean image and its VAE mean latent (B, C, h, w) with
        latent-space noise augmentation."""
        embedding = conditioner.encode_image(self.image_encoder, image).to(self.device, self.dtype)
        pixels = conditioner.preprocess_image(image, height, width).to(self.device)
        latent = self.vae.encode(pixels).float()
        latent = latent + noise_aug_strength * randn(latent.shape, generator, self.device, latent.dtype)
        return embedding, latent.to(self.dtype)

    def flow_frames(self, first, last, height: int, width: int, num_frames: int) -> torch.Tensor:
        """(B, T, 3, H, W) in [0, 1] (CPU, fp32): flow_interpolate(first, last) at height x width."""
        ends = [((conditioner.preprocess_image(x, height, width) + 1) / 2).permute(0, 2, 3, 1).cpu().float().numpy()
                for x in (first, last)]
        if ends[0].shape != ends[1].shape:
            raise ValueError(f"first and last image batches differ: {ends[0].shape} vs {ends[1].shape}")
        return torch.stack([torch.from_numpy(flow_interpolate(a, b, num_frames)).permute(0, 3, 1, 2) for a, b in zip(*ends)])

    def _conditioning(self, image, *, height, width, num_frames, fps, motion_bucket_id, noise_aug_strength, generator,
                      num_videos_per_prompt, image_embeddings=None) -> Conditioning:
        first, last, flow_means = image
        (emb_first, z_first), (emb_last, z_last) = (
            self.encode_end(x, height, width, noise_aug_strength, generator) for x in (first, last))
        if z_first.shape != z_last.shape:
            raise ValueError(f"first and last image batches differ: {tuple(z_first.shape)} vs {tuple(z_last.shape)}")
        repeat = lambda t: t.repeat_interleave(num_videos_per_prompt, dim=0)  # noqa: E731
        latents = interpolation_latents(repeat(z_first), repeat(z_last), num_frames)
        context = interpolation_context(repeat(emb_first), repeat(emb_last))
        prior = None
        if flow_means is not None:  # the blend's ends (the augmented end latents), optical flow's frames between
            prior = latent_prior(latents, 1.0, masked=True)
            prior[:, 1:-1] = repeat(flow_means[:, 1:-1].to(prior))
        return Conditioning(
            image_latents=latents, context=context, prior_latents=prior,
            added_time_ids=conditioner.added_time_ids(fps, motion_bucket_id, noise_aug_strength, latents.shape[0],
                                                      self.dtype, self.device))
