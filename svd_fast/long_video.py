"""Videos longer than the model's window: chunked continuation with held overlap frames.

Chunk 0 is an ordinary sample from the input image. Every later chunk has the model's window of
frames and starts `overlap` frames before the previous chunk ends:
- its conditioning latent is the previous chunk's frame at that start (the first overlap frame),
  as in StreamingSVD's and every image-to-video continuation: the model's strongest signal, the
  frame it copies, is where the chunk begins;
- its first `overlap` frames are held to the previous chunk's latents during sampling: at every
  step they are replaced by those latents noised to the step's sigma with the chunk's own fixed
  noise (the replacement method of video-diffusion inpainting), so the new frames are denoised
  next to, and attend temporally to, frames the previous chunk already made; at sigma 0 the held
  frames equal the previous ones, so the overlap is blended by construction, not cross-faded;
- its cross-attention keeps the input image's CLIP embedding (StreamingSVD's appearance anchor):
  the image the user gave, not the last frame, says what the video looks like;
- with colour_anchor (the default), every frame, its conditioning frame among them, gets the
  input image's colour statistics (mean and standard deviation of each Lab channel, Reinhard et
  al.'s colour transfer, as Deforum's colour coherence matches every frame to frame 0): the small
  colour error each chunk makes when it copies its conditioning frame would otherwise add up chunk
  by chunk, and a chunk that copies a colour-matched frame next to unmatched ones leaves a seam
  (matching the conditioning frame only: seam dip 1.0-1.2 dB at 4x the window; every frame: 0.1 dB);
- with detail_anchor (the default), every frame keeps its own low frequencies (colour, shapes,
  motion) and takes its fine detail from the input image, warped onto the frame by optical flow
  (`transfer_detail`): each chunk copies a frame a little softer than the one it was conditioned
  on, so without it detail decays chunk by chunk (measured on the default model, 4 held-out photos,
  4x the window: the last frame keeps 0.09x of the input's sharpness, the subjects dissolved by the
  third chunk; with it 0.55x, the same motion: bench/long_video.py). Detail first, then colour; the
  conditioning frame of the next chunk is taken after both. A video of one chunk is left as the
  pipeline makes it.
FIFO-Diffusion's diagonal denoising (a queue of frames at rising noise levels) needs a model
trained or tuned for unequal noise across frames; SVD shares one sigma per clip, so the chunked
scheme fits the released models as they are.
Only the previous chunk's overlap latents and one conditioning frame are carried from chunk to
chunk: the memory of sampling does not grow with the length (the output frames, uint8, do).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from svd_fast import camera_start
from svd_fast.pipeline import randn
from svd_fast.sampling import init_noise_scale


@dataclass(frozen=True)
class Chunk:
    """One window of the long video: frames start .. start + window - 1 of the whole video, of
    which the first `held` are the previous chunk's (kept as they are, not output again)."""

    index: int
    start: int
    held: int


def chunk_plan(num_frames: int, window: int, overlap: int) -> list[Chunk]:
    """The chunks that cover num_frames frames (the last one may run past the end; its extra
    frames are dropped)."""
    if window < 2:
        raise ValueError(f"window must be >= 2 frames, got {window}")
    if not 1 <= overlap < window:
        raise ValueError(f"overlap must be between 1 and window - 1 = {window - 1}, got {overlap}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    chunks = [Chunk(0, 0, 0)]
    while chunks[-1].start + window < num_frames:
        chunks.append(Chunk(len(chunks), chunks[-1].start + window - overlap, overlap))
    return chunks


def match_colours(frame: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """frame (3, H, W) in [0, 1] with the mean and standard deviation of each Lab channel of
    reference (3, H', W') in [0, 1]."""
    import cv2

    def lab(image):
        return cv2.cvtColor(image.permute(1, 2, 0).float().cpu().numpy(), cv2.COLOR_RGB2LAB).reshape(-1, 3)

    ours, theirs = lab(frame), lab(reference)
    scale = theirs.std(0) / np.maximum(ours.std(0), 1e-6)
    moved = ((ours - ours.mean(0)) * scale + theirs.mean(0)).astype(np.float32)
    rgb = cv2.cvtColor(moved.reshape(frame.shape[1], frame.shape[2], 3), cv2.COLOR_LAB2RGB)
    return torch.from_numpy(rgb).permute(2, 0, 1).clamp(0, 1).to(frame.dtype)


DETAIL_SIGMA = 0.375
"""transfer_detail's split between a frame's own and the input's detail: the Gaussian's standard
deviation in latent pixels (1.5 px at the default model's 4x VAE; 3 px for SVD's 8x VAE, not measured
on released weights). Chosen among 1, 1.5 and 2.5 px on
its held-out photos at 4x the window (before every frame was colour-matched, sharpness against an
unanchored frame 0): seam dip 1.10 / 1.15 / 1.32 dB against 1.04 without, last frame's sharpness
0.73 / 0.93 / 1.00x, mean flow 0.58 / 0.55 / 0.48 px/frame against 0.55: 2.5 px starts to hold the
motion back."""


def transfer_detail(frame: torch.Tensor, reference: torch.Tensor, sigma: float) -> torch.Tensor:
    """frame (3, H, W) in [0, 1] with its detail finer than a Gaussian of `sigma` px replaced by
    reference's (3, H, W), warped onto the frame: low-pass(frame) + high-pass(warped reference).

    The warp follows Farneback's flow from the frame to the reference (grey levels), so detail lands
    where the content it belongs to has moved; the frame's colour, shapes and motion are kept."""
    import cv2

    from svd_fast.interpolation import FLOW, warp_by_flow

    if frame.shape != reference.shape:
        raise ValueError(f"transfer_detail: frame {tuple(frame.shape)} and reference {tuple(reference.shape)} differ")
    ours, theirs = (t.permute(1, 2, 0).float().cpu().numpy() for t in (frame, reference))
    grey = [cv2.cvtColor((np.clip(a, 0, 1) * 255).round().astype(np.uint8), cv2.COLOR_RGB2GRAY) for a in (ours, theirs)]
    flow = cv2.calcOpticalFlowFarneback(grey[0], grey[1], None, **FLOW)
    warped = warp_by_flow(theirs, flow)
    out = cv2.GaussianBlur(ours, (0, 0), sigma) + warped - cv2.GaussianBlur(warped, (0, 0), sigma)
    return torch.from_numpy(np.clip(out, 0, 1)).permute(2, 0, 1).to(frame.dtype)


def anchor_frames(frames: torch.Tensor, reference: torch.Tensor, detail_sigma: float | None,
                  colour: bool) -> torch.Tensor:
    """frames (T, 3, H, W) in [0, 1], each given the reference's detail finer than `detail_sigma` px
    (transfer_detail; None: not) and then, with `colour`, its Lab colour statistics (match_colours)."""
    out = []
    for frame in frames:
        if detail_sigma is not None:
            frame = transfer_detail(frame, reference, detail_sigma)
        out.append(match_colours(frame, reference) if colour else frame)
    return torch.stack(out)


def sample_long_video(pipe, image, num_frames: int, *, window: int | None = None, overlap: int = 1,
                      height: int, width: int, num_inference_steps: int, generator: torch.Generator,
                      colour_anchor: bool = True, detail_anchor: bool = True, decode_chunk_size: int | None = None,
                      on_chunk=None, **call_args) -> np.ndarray:
    """num_frames frames (T, H, W, 3) float in [0, 1] from an image, `window` frames at a time.

    call_args go to every pipe call (fps, motion_bucket_id, guidance, noise_aug_strength, sampler,
    ...). colour_anchor / detail_anchor: see the module docstring. on_chunk(chunk, total_chunks),
    when given, is called after each chunk. `camera` (svd_fast.camera_start's moves, the image start
    only) carries on over the chunks: each chunk's frame j starts from its conditioning frame moved j
    times, noised to image_init_sigma (default camera_start.START_SIGMA).
    """
    from svd_fast import conditioner

    window = window or pipe.config.num_frames
    plan = chunk_plan(num_frames, window, overlap)
    sampler = call_args.get("sampler") or pipe.default_sampler
    # Image-initialised sampling and the first-frame hold act per chunk here: each chunk starts
    # from, and holds, its own conditioning frame, so they are taken out of the pipe's arguments.
    image_init_sigma = call_args.pop("image_init_sigma", None)
    keep_first_frame = call_args.pop("keep_first_frame", False)
    if call_args.pop("render", "frames") != "frames":
        raise ValueError("a long video renders frames: render='warp' moves one window from the input image")
    move = call_args.pop("camera", None)
    if call_args.pop("camera_from", "image") != "image" and move is not None:
        raise ValueError("a long video's camera starts each chunk from its conditioning frame: camera_from='image' only")
    if move is not None:
        move = camera_start.as_move(move)
        image_init_sigma = camera_start.START_SIGMA if image_init_sigma is None else image_init_sigma
    sigmas = pipe._sigmas(num_inference_steps, None, sampler, start=image_init_sigma).to(pipe.device)
    embeddings = conditioner.encode_image(pipe.image_encoder, image)  # the appearance anchor
    reference = ((conditioner.preprocess_image(image, height, width)[0] + 1) / 2).clamp(0, 1)
    f = pipe.vae.config.downsample_factor
    shape = (1, window, pipe.vae.config.latent_channels, height // f, width // f)

    out, previous, condition = [], None, image
    for chunk in plan:
        noise = randn(shape, generator, pipe.device, torch.float32)
        needs_still = image_init_sigma is not None or (keep_first_frame and not chunk.held)
        still = pipe.still_latents(condition, height, width) if needs_still else None
        if move is not None:
            x = pipe.moved_latents(condition, move, window, height, width) + sigmas[0] * noise
        else:
            x = noise * init_noise_scale(sigmas) if image_init_sigma is None else still[:, None] + sigmas[0] * noise
        held = previous[:, -chunk.held:].float() if chunk.held else still[:, None] if keep_first_frame else None
        if held is not None:
            x[:, : held.shape[1]] = held + sigmas[0] * noise[:, : held.shape[1]]
        latents = pipe(condition, height=height, width=width, num_frames=window, latents=x / init_noise_scale(sigmas),
                       sigmas=sigmas, generator=generator, output_type="latent", image_embeddings=embeddings,
                       callback_on_step_end=None if held is None else _holder(held, noise, sigmas), **call_args).frames
        frames = ((pipe.decode(latents, decode_chunk_size or window)[0] + 1) / 2).clamp(0, 1)  # (T, 3, H, W)
        if len(plan) > 1:  # the next chunk starts, and is conditioned, at the first overlap frame
            sigma = DETAIL_SIGMA * pipe.vae.config.downsample_factor if detail_anchor else None
            frames = anchor_frames(frames.float().cpu(), reference, sigma, colour_anchor)  # reference: float32 on the CPU
            condition = frames[window - overlap]
        previous = latents
        out.append(frames[chunk.held:].permute(0, 2, 3, 1).float().cpu().numpy())
        if on_chunk is not None:
            on_chunk(chunk, len(plan))
    return np.concatenate(out)[:num_frames]


def _holder(held: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor):
    """A step callback that replaces the first held.shape[1] frames by `held` re-noised to the
    step's sigma with their own initial noise."""
    n = held.shape[1]

    def hold(pipe, i, sigma, values):
        latents = values["latents"]
        latents[:, :n] = (held + sigmas[i + 1] * noise[:, :n]).to(latents.dtype)
        return {"latents": latents}

    return hold


# ------------------------------------------------------------------------------------ figures
def seam_report(video: np.ndarray, plan: list[Chunk]) -> dict:
    """Frame-to-frame PSNR at the chunk seams (the last frame kept from one chunk -> the first new
    frame of the next) against that inside chunks, each from the mean squared difference of its
    pairs: a visible seam is a dip at the seams."""
    squared = [float(np.mean((b.astype(np.float64) - a) ** 2)) for a, b in zip(video, video[1:])]
    seams = {c.start + c.held - 1 for c in plan[1:] if c.start + c.held < len(video)}

    def db(errors):
        mse = float(np.mean(errors)) if errors else float("nan")
        return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))

    return {"seam_psnr": db([e for i, e in enumerate(squared) if i in seams]),
            "inside_psnr": db([e for i, e in enumerate(squared) if i not in seams]), "seams": len(seams)}


def drift_report(video: np.ndarray, reference: np.ndarray | None = None) -> dict:
    """How far frame k drifts from frame 0: colour (largest channel-mean error, /255) and
    sharpness (variance of the Laplacian of frame k / of frame 0), per frame and summarised; with
    `reference` (H, W, 3), the input image, also the last frame's sharpness against the input's (how
    much of the input's detail is left, whatever frame 0 kept)."""
    import cv2

    def sharpness(frame):
        grey = cv2.cvtColor((np.clip(frame, 0, 1) * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
        return float(cv2.Laplacian(grey.astype(np.float64), cv2.CV_64F).var())

    means = video.reshape(len(video), -1, 3).mean(1)
    colour = np.abs(means - means[0]).max(1) * 255
    base = max(sharpness(video[0]), 1e-12)
    sharp = np.array([sharpness(frame) / base for frame in video])
    report = {"colour_drift_255": colour.tolist(), "sharpness_ratio": sharp.tolist(),
              "mean_colour_drift_255": float(colour.mean()), "last_colour_drift_255": float(colour[-1]),
              "last_sharpness_ratio": float(sharp[-1])}
    if reference is not None:
        report["last_sharpness_vs_input"] = sharpness(video[-1]) / max(sharpness(reference), 1e-12)
    return report
