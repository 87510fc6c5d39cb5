"""Consistency distillation of an image-to-video model into a few-step student (CM, LCM, AnimateLCM).

The run starts from the teacher's weights (recipe.init_from); a frozen copy stays the teacher.
Its sampling grid is the Karras grid of `num_train_timesteps` points sigma_0 = sigma_max > ... >
sigma_{N-1} = sigma_min that the student is saved with (svd_fast.consistency.ConsistencySchedule).
For one clip with clean latents x0, noise n and conditioning c:

    i ~ U{0, ..., N-2},   j = min(i + k, N-1),   x = x0 + sigma_i * n
    x_hat  = one step of the teacher's guided probability-flow ODE from sigma_i to sigma_j
             (Euler or Heun; per-frame linear guidance as at sampling, so the student learns the
             guided trajectories and samples without guidance: one UNet batch per step)
    target = f_target(x_hat, sigma_j)        (no gradient)
    loss   = w_i * (sqrt(mean((f_student(x, sigma_i) - target)^2) + c^2) - c)   (pseudo-Huber; w_i = 1
             as LCM, or 1 / (sigma_i - sigma_j) as improved consistency training)

f is the consistency function: the v-prediction UNet with svd_fast.denoiser.consistency_scalings,
exactly the identity at sigma_min, so the last interval ties the chain to the teacher's ODE and
f(x, sigma_i) learns to jump to the end of the teacher's trajectory from any point of it. k = 1 is
the consistency models paper's chain of N-1 links; LCM's skipping step (Luo et al. 2023, sec. 4.3)
takes k > 1: the teacher steps over k intervals at once, so only about N/k links separate sigma_max
from the boundary and the student's high-noise jumps inherit fewer links' errors. The target
network is the EMA of the student (recipe.ema_decay, which the trainer keeps and checkpoints),
or the student's own current weights when the recipe has no EMA.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from svd_fast.consistency import ConsistencySchedule
from svd_fast.denoiser import Conditioning, Denoiser, LinearGuidedDenoiser, UnguidedDenoiser
from svd_fast.sampling import get_sigmas_karras

SOLVERS = ("euler", "heun")
WEIGHTINGS = ("ict", "uniform")
GRID_DRAW_SALT = 0x5EED_C0DE
"""mixed into a sample's seed for its grid index: independent of the objective's own draws"""


@dataclass(frozen=True)
class DistillConfig:
    """The grid the student is distilled on and how the teacher walks it."""

    num_train_timesteps: int = 40
    """points of the Karras grid (AnimateLCM-SVD: 40); few-step sampling uses every k-th"""
    sigma_min: float = 0.002
    """the student is the identity here (its boundary sigma)"""
    sigma_max: float = 700.0
    rho: float = 7.0
    solver: str = "euler"
    """teacher ODE step over one grid interval: 'euler' (1 guided UNet batch) or 'heun' (2)"""
    min_guidance_scale: float = 1.0
    """teacher guidance on the first frame (rising linearly to max_guidance_scale on the last)"""
    max_guidance_scale: float = 2.0
    huber_c: float = 1e-3
    """pseudo-Huber constant, in units of the latents' RMS error"""
    skip: int = 1
    """grid intervals one teacher step spans (LCM's skipping step k; 1: the consistency models paper)"""
    weighting: str = "uniform"
    """per-interval loss weight: 'uniform' (LCM, AnimateLCM) or 'ict', 1 / (sigma_i - sigma_j) of the teacher's step
    (Song & Dhariwal 2023: up-weights the small intervals near the data)"""

    def validate(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"distill.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"distill.solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.huber_c <= 0 or self.max_guidance_scale < self.min_guidance_scale or self.min_guidance_scale < 0:
            raise ValueError(f"distill: need huber_c > 0 and 0 <= min_guidance_scale <= max_guidance_scale, got {self}")
        if not 1 <= self.skip < self.num_train_timesteps:
            raise ValueError(f"distill.skip must be in [1, num_train_timesteps - 1], got {self.skip}")
        self.schedule().sigmas(1)  # the grid's own checks (N >= 2, 0 < sigma_min < sigma_max, rho > 0)

    def schedule(self) -> ConsistencySchedule:
        """What the student is saved with (its scheduler config) and sampled on."""
        return ConsistencySchedule.from_scheduler_config(
            {"num_train_timesteps": self.num_train_timesteps, "sigma_min": self.sigma_min,
             "sigma_max": self.sigma_max, "rho": self.rho, "boundary_sigma": self.sigma_min})

    def grid(self) -> torch.Tensor:
        """sigma_0 > ... > sigma_{N-1} = sigma_min (float32)."""
        return get_sigmas_karras(self.num_train_timesteps, self.sigma_min, self.sigma_max, self.rho)[:-1]


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """Per-sample sqrt(mean((a - b)^2) + c^2) - c over all but the first dimension."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)
    return mse / ((mse + c * c).sqrt() + c)  # = sqrt(mse + c^2) - c without the cancellation for mse << c^2


class ConsistencyObjective(nn.Module):
    """The module the training engine owns: the student's distance to the targets, per clip."""

    def __init__(self, unet: nn.Module, config: DistillConfig):
        super().__init__()
        self.unet = unet
        self.config = config

    def forward(self, noisy, sigma, target, weight, image_latents, context, added_time_ids, image_only_indicator):
        cond = Conditioning(image_latents, context, added_time_ids, image_only_indicator)
        student = Denoiser(self.unet, boundary_sigma=self.config.sigma_min)(noisy, sigma, cond)
        return weight * pseudo_huber(student, target, self.config.huber_c)


class ConsistencyDistiller:
    """Turns the diffusion objective's inputs into the consistency objective's (teacher step and
    target); holds the frozen teacher and the target network, outside the training engine."""

    def __init__(self, teacher: nn.Module, config: DistillConfig):
        config.validate()
        self.config = config
        self.teacher = copy.deepcopy(teacher).requires_grad_(False).eval()
        self.target = copy.deepcopy(teacher).requires_grad_(False).eval()
        self.grid = config.grid()

    def load_target(self, weights: dict[str, torch.Tensor]) -> None:
        """The target network's weights for the next step (EMA of the student, or the student)."""
        unexpected = self.target.load_state_dict(weights, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"target network: {len(unexpected)} weights the UNet does not have, e.g. {unexpected[:3]}")

    def grid_index(self, seed: int) -> int:
        """The sample's interval [sigma_i, sigma_{i+1}], from its seed (resumable, batch-independent)."""
        gen = torch.Generator().manual_seed((int(seed) ^ GRID_DRAW_SALT) % (2**63))
        return int(torch.randint(0, len(self.grid) - 1, (), generator=gen))

    @torch.no_grad()
    def training_inputs(self, inputs: dict, seeds) -> dict:
        """ConsistencyObjective's arguments from prepare_inputs' (its sigma is replaced by grid draws)."""
        device = inputs["latents"].device
        index = torch.tensor([self.grid_index(s) for s in seeds])
        index_next = (index + self.config.skip).clamp(max=len(self.grid) - 1)
        sigma, sigma_next = self.grid[index].to(device), self.grid[index_next].to(device)
        latents = inputs["latents"].float()
        noisy = latents + sigma.reshape(-1, 1, 1, 1, 1) * inputs["noise"].float()
        cond = Conditioning(inputs["image_latents"], inputs["context"], inputs["added_time_ids"],
                            inputs["image_only_indicator"])
        x_hat = self.teacher_step(noisy, sigma, sigma_next, cond)
        target = Denoiser(self.target, boundary_sigma=self.config.sigma_min)(x_hat, sigma_next, cond).float()
        weight = 1 / (sigma - sigma_next) if self.config.weighting == "ict" else torch.ones_like(sigma)
        return {"noisy": noisy, "sigma": sigma, "target": target, "weight": weight, "image_latents": inputs["image_latents"],
                "context": inputs["context"], "added_time_ids": inputs["added_time_ids"],
                "image_only_indicator": inputs["image_only_indicator"]}

    def teacher_step(self, x, sigma, sigma_next, cond: Conditioning) -> torch.Tensor:
        """One step of the guided probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma, per sample.

        Euler is written as D + sigma_next * d (= x + (sigma_next - sigma) d), which does not cancel
        the large noisy terms when a skipping step lands near sigma_min. Heun's correction divides
        by sigma_next, so steps that end at sigma_min stay Euler (Karras et al.'s last step, too)."""
        denoise = self._guided(cond, x.shape[1])
        s, s_next = sigma.reshape(-1, 1, 1, 1, 1), sigma_next.reshape(-1, 1, 1, 1, 1)
        denoised = denoise(x, sigma).float()
        d = (x - denoised) / s
        x_next = denoised + s_next * d
        if self.config.solver == "heun":
            d_next = (x_next - denoise(x_next, sigma_next).float()) / s_next
            corrected = x_next + (s_next - s) * (d_next - d) / 2
            x_next = torch.where(s_next > self.config.sigma_min, corrected, x_next)
        return x_next

    def _guided(self, cond: Conditioning, num_frames: int):
        teacher = Denoiser(self.teacher)
        if self.config.max_guidance_scale > 1:
            return LinearGuidedDenoiser(teacher, cond, self.config.min_guidance_scale, self.config.max_guidance_scale,
                                        num_frames)
        return UnguidedDenoiser(teacher, cond)
