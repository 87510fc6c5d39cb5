"""EDM preconditioning of the v-prediction UNet (sgm VScalingWithEDMcNoise, sigma_data = 1).

D(x; sigma) = c_skip * x + c_out * F([c_in * x | z_cond], c_noise, context, added_time_ids)
with c_skip = 1/(sigma^2+1), c_out = -sigma/sqrt(sigma^2+1), c_in = 1/sqrt(sigma^2+1),
c_noise = 0.25 ln(sigma). The conditioning latent is concatenated after the c_in scaling.

A model with a prior mu (UNetConfig.latent_prior: its conditioning latents, for SVD-FI's missing
frames the blend of its end frames) denoises the difference from it:
D(x; sigma) = mu + c_skip * (x - mu) + c_out * F([c_in * (x - mu) | z_cond], ...).
At high noise D starts from mu instead of from zero, so the network only has to learn what
the conditioning gets wrong; the sampler is unchanged (D is still a denoiser of x).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def v_scalings(sigma: torch.Tensor):
    """(c_skip, c_out, c_in, c_noise) for noise level(s) sigma, in sigma's dtype."""
    c_skip = 1.0 / (sigma**2 + 1.0)
    c_out = -sigma / (sigma**2 + 1.0) ** 0.5
    c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
    c_noise = 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise


def consistency_scalings(sigma: torch.Tensor, boundary_sigma: float):
    """The v-scalings with the output pair shifted so the model is the identity at boundary_sigma.

    c_skip = 1/((sigma - eps)^2 + 1), c_out = -(sigma - eps)/sqrt(sigma^2 + 1), eps = boundary_sigma:
    the consistency models paper's parametrisation (App. C, sigma_data = 1) in the sign convention
    of the v-prediction UNet. f(x, eps) = x exactly, whatever the network outputs, and for
    sigma >> eps the scalings are SVD's own, so a student initialised from the teacher starts as
    the teacher's denoiser. eps = 0 is AnimateLCM-SVD's released parametrisation (its scheduler
    uses the plain v-scalings, the identity only at sigma = 0).
    """
    c_skip = 1.0 / ((sigma - boundary_sigma) ** 2 + 1.0)
    c_out = -(sigma - boundary_sigma) / (sigma**2 + 1.0) ** 0.5
    _, _, c_in, c_noise = v_scalings(sigma)
    return c_skip, c_out, c_in, c_noise


def latent_prior(image_latents: torch.Tensor, scale: float, masked: bool) -> torch.Tensor:
    """A model's prior mu (B, T, C, h, w) from its conditioning latents (unscaled VAE means) times
    `scale`: each frame's own conditioning latent; for SVD-FI (`masked`: conditioning (B, T, C + 1, h, w)
    = [z_first, 0, ..., 0, z_last | mask]) the linear blend (1 - a_t) z_first + a_t z_last,
    a_t = t / (T - 1). Zero for the unconditional branch (its conditioning is zeros)."""
    if not masked:
        return scale * image_latents.float()
    t, c = image_latents.shape[1], image_latents.shape[2] - 1
    a = torch.linspace(0, 1, t, device=image_latents.device).reshape(1, t, 1, 1, 1)
    first, last = image_latents[:, :1, :c].float(), image_latents[:, -1:, :c].float()
    return scale * ((1 - a) * first + a * last)


@dataclass
class Conditioning:
    """Everything the UNet is conditioned on, already batched like the latents it goes with.

    image_latents: (B, T, 4, h, w) VAE mean of the noise-augmented image, copied over frames.
    context: (B, L, D) CLIP image embedding(s). added_time_ids: (B, 3) [fps_id, motion, cond_aug].
    image_only_indicator: optional (B, T), 1 for frames of image-only samples.
    prior_latents: optional (B, T, C, h, w) unscaled latents that a model with a latent prior
    corrects instead of the one its conditioning latents give (latent_prior), e.g. SVD-FI's
    in-between frames by optical flow; ignored by models without one.
    """

    image_latents: torch.Tensor
    context: torch.Tensor
    added_time_ids: torch.Tensor
    image_only_indicator: torch.Tensor | None = None
    prior_latents: torch.Tensor | None = None

    def cat(self, other: "Conditioning") -> "Conditioning":
        """Stack two conditionings along the batch (used for [uncond, cond] guidance batches)."""
        ind = None
        if self.image_only_indicator is not None or other.image_only_indicator is not None:
            ind = torch.cat([_indicator(self), _indicator(other)])
        if (self.prior_latents is None) != (other.prior_latents is None):
            raise ValueError("cannot stack a conditioning with prior_latents and one without")
        prior = None if self.prior_latents is None else torch.cat([self.prior_latents, other.prior_latents])
        return Conditioning(
            torch.cat([self.image_latents, other.image_latents]),
            torch.cat([self.context, other.context]),
            torch.cat([self.added_time_ids, other.added_time_ids]),
            ind,
            prior,
        )

    def unconditional(self) -> "Conditioning":
        """Zero image embedding and zero conditioning latent; micro-conditioning kept (sgm/diffusers)."""
        prior = None if self.prior_latents is None else torch.zeros_like(self.prior_latents)
        return Conditioning(
            torch.zeros_like(self.image_latents), torch.zeros_like(self.context), self.added_time_ids,
            self.image_only_indicator, prior,
        )


def _indicator(c: Conditioning) -> torch.Tensor:
    if c.image_only_indicator is not None:
        return c.image_only_indicator
    b, t = c.image_latents.shape[:2]
    return torch.zeros(b, t, device=c.image_latents.device)


class Denoiser:
    """Wraps the UNet into D(x, sigma, cond): the denoised estimate of the clean latents.

    x: (B, T, 4, h, w) noisy latents (any float dtype; the UNet runs in its own dtype);
    sigma: scalar or (B,) noise level. Returns D in x's dtype.
    """

    def __init__(self, unet, boundary_sigma: float | None = None):
        self.unet = unet
        self.boundary_sigma = boundary_sigma
        """None: the diffusion model's EDM denoiser D; a float eps: the consistency function
        f(x, sigma) of a distilled student, exactly x at sigma = eps (consistency_scalings)"""

    def output_scalings(self, sigma: torch.Tensor):
        if self.boundary_sigma is None:
            return v_scalings(sigma)[:2]
        return consistency_scalings(sigma, self.boundary_sigma)[:2]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def prior(self, cond: Conditioning) -> torch.Tensor | None:
        """The model's prior mu (fp32, like the latents) for this conditioning, or None (module docstring)."""
        config = getattr(self.unet, "config", None)
        scale = getattr(config, "latent_prior", 0.0)
        if not scale:
            return None
        if getattr(cond, "prior_latents", None) is not None:
            return scale * cond.prior_latents.float()
        return latent_prior(cond.image_latents, scale, bool(getattr(config, "mask_embedding", False)))

    def model_output(self, x, sigma, cond: Conditioning) -> torch.Tensor:
        """The raw v-prediction F for noisy latents x at noise level sigma."""
        return self._model_output(x, sigma, cond, self.prior(cond))

    def _model_output(self, x, sigma, cond: Conditioning, prior: torch.Tensor | None) -> torch.Tensor:
        """model_output with the prior already computed (a sampling step needs it twice)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        _, _, c_in, c_noise = v_scalings(sigma)
        c_in = c_in.reshape(-1, 1, 1, 1, 1)
        x = x.float() if prior is None else x.float() - prior
        x_in = torch.cat([(x * c_in).to(self.dtype), self.conditioning_latents(cond, prior).to(self.dtype)], dim=2)
        return self.unet(
            x_in, c_noise, cond.context.to(self.dtype), cond.added_time_ids.to(self.dtype), cond.image_only_indicator
        )

    def conditioning_latents(self, cond: Conditioning, prior: torch.Tensor | None) -> torch.Tensor:
        """The latents concatenated to the noisy input: the conditioning's own, and for a model with
        UNetConfig.prior_conditioning the prior's latents (unscaled) in the slots whose mask is 0."""
        config = getattr(self.unet, "config", None)
        if prior is None or not getattr(config, "prior_conditioning", False):
            return cond.image_latents
        mask = cond.image_latents[:, :, -1:].float()
        slots = cond.image_latents[:, :, :-1].float() + (1 - mask) * prior / config.latent_prior
        return torch.cat([slots, mask], dim=2)

    def denoised_from_output(self, x, sigma, v, prior: torch.Tensor | None = None):
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1, 1)
        c_skip, c_out = self.output_scalings(sigma)
        if prior is None:
            return (c_skip * x.float() + c_out * v.float()).to(x.dtype)
        return (prior + c_skip * (x.float() - prior) + c_out * v.float()).to(x.dtype)

    def __call__(self, x, sigma, cond: Conditioning) -> torch.Tensor:
        prior = self.prior(cond)
        return self.denoised_from_output(x, sigma, self._model_output(x, sigma, cond, prior), prior)


class LinearGuidedDenoiser:
    """Per-frame linear classifier-free guidance (sgm LinearPredictionGuider).

    The scale rises linearly from min_scale on the first frame to max_scale on the last; the
    unconditional and conditional halves run as one UNet batch [uncond, cond]. Guidance is applied
    to the v output, which equals guiding D (D is affine in v with the same c_skip x in both halves).
    """

    def __init__(self, denoiser: Denoiser, cond: Conditioning, min_scale: float, max_scale: float, num_frames: int):
        self.denoiser = denoiser
        self.batch_cond = cond.unconditional().cat(cond)
        self.scale = torch.linspace(min_scale, max_scale, num_frames).reshape(1, num_frames, 1, 1, 1)

    def __call__(self, x, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        both = sigma.repeat(2) if sigma.numel() > 1 else sigma  # per-sample sigmas (distillation) for both halves
        prior = self.denoiser.prior(self.batch_cond)
        v = self.denoiser._model_output(torch.cat([x, x]), both, self.batch_cond, prior)
        scale = self.scale.to(x.device)
        if prior is not None:  # the halves' priors differ (zero unconditionally): guide D itself
            d_uncond, d_cond = self.denoiser.denoised_from_output(torch.cat([x, x]), both, v, prior).float().chunk(2)
            return (d_uncond + scale * (d_cond - d_uncond)).to(x.dtype)
        v_uncond, v_cond = v.float().chunk(2)
        return self.denoiser.denoised_from_output(x, sigma, v_uncond + scale * (v_cond - v_uncond))


class UnguidedDenoiser:
    """D(x, sigma) without guidance (max guidance scale <= 1)."""

    def __init__(self, denoiser: Denoiser, cond: Conditioning):
        self.denoiser, self.cond = denoiser, cond

    def __call__(self, x, sigma) -> torch.Tensor:
        return self.denoiser(x, sigma, self.cond)


class SigmaSwitchDenoiser:
    """`early` at noise levels above `switch_sigma`, `late` at and below it: prompt editing over the
    noise levels (a text model's lead prompt, svd_fast.text_to_video). Per-sample sigmas switch
    together, on the largest."""

    def __init__(self, early, late, switch_sigma: float):
        self.early, self.late, self.switch_sigma = early, late, float(switch_sigma)

    def __call__(self, x, sigma) -> torch.Tensor:
        high = float(torch.as_tensor(sigma).max()) > self.switch_sigma
        return (self.early if high else self.late)(x, sigma)


class BidirectionalDenoiser:
    """Training-free interpolation with an image-to-video model (in the spirit of ViBiDSampler and
    of the time-reversal fusion of Feng et al. 2024): one guided denoiser conditioned on the first
    frame runs on the clip, one conditioned on the last frame runs on the clip reversed in time,
    and their estimates are fused, frame t weighted (T-1-t)/(T-1) towards the forward one. Each
    end frame is then exactly its own direction's estimate (the frame that direction copies),
    and the in-between frames are pulled towards both ends."""

    def __init__(self, forward, backward, num_frames: int):
        self.forward, self.backward = forward, backward
        self.weight = torch.linspace(1.0, 0.0, num_frames).reshape(1, num_frames, 1, 1, 1)

    def __call__(self, x, sigma) -> torch.Tensor:
        ahead = self.forward(x, sigma).float()
        back = self.backward(x.flip(1), sigma).float().flip(1)
        weight = self.weight.to(x.device)
        return (weight * ahead + (1 - weight) * back).to(x.dtype)
