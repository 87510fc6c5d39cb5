"""Few-step consistency sampling settings, read from a checkpoint's scheduler config.

AnimateLCM-SVD-xt (Wang et al. 2024, arXiv 2402.00769) ships an SVD-xt UNet distilled into a
consistency model, sampled with its `AnimateLCMSVDStochasticIterativeScheduler`:

    {"_class_name": "AnimateLCMSVDStochasticIterativeScheduler", "num_train_timesteps": 40,
     "sigma_min": 0.002, "sigma_max": 700.0, "sigma_data": 1.0, "s_noise": 1.0, "rho": 7,
     "clip_denoised": false}

A diffusers pipeline folder whose scheduler/scheduler_config.json names that class is sampled
with svd_fast's `consistency` sampler on the same grid. svd_fast's own distilled students
(svd_fast.train.distill) save the same keys plus `boundary_sigma`, the noise level at which their
consistency function is exactly the identity (sigma_min; AnimateLCM's release has none, i.e. 0).
"""
from __future__ import annotations

from dataclasses import dataclass

CONSISTENCY_SCHEDULER = "AnimateLCMSVDStochasticIterativeScheduler"
FEW_STEP_DEFAULTS = {"num_inference_steps": 4, "max_guidance_scale": 1.2}
"""sampling defaults of a consistency checkpoint without svd_fast_sampling.json: AnimateLCM-SVD's
demo settings (4 steps; guidance 1 on the first frame rising to 1.2 on the last)"""


@dataclass(frozen=True)
class ConsistencySchedule:
    """The grid a consistency model was distilled on and how it re-noises between steps."""

    num_train_timesteps: int = 40
    """points of the Karras grid the student was trained on; sampling uses n of them"""
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0
    s_noise: float = 1.0
    """scale of the fresh noise added between steps"""
    clip_denoised: bool = False
    """clamp each step's estimate to [-1, 1] (AnimateLCM-SVD: false; latents are not bounded)"""
    boundary_sigma: float = 0.0
    """the consistency function is the identity at this noise level (svd_fast students: sigma_min)"""

    @classmethod
    def from_scheduler_config(cls, config: dict) -> "ConsistencySchedule":
        """Settings of a scheduler config (defaults for missing keys); ValueError on values svd_fast cannot honour."""
        sigma_data = float(config.get("sigma_data", 1.0))
        if sigma_data != 1.0:
            raise ValueError(f"scheduler config: sigma_data {sigma_data} is not supported (SVD's v-scalings use 1.0)")
        schedule = cls(
            num_train_timesteps=int(config.get("num_train_timesteps", cls.num_train_timesteps)),
            sigma_min=float(config.get("sigma_min", cls.sigma_min)),
            sigma_max=float(config.get("sigma_max", cls.sigma_max)),
            rho=float(config.get("rho", cls.rho)),
            s_noise=float(config.get("s_noise", cls.s_noise)),
            clip_denoised=bool(config.get("clip_denoised", cls.clip_denoised)),
            boundary_sigma=float(config.get("boundary_sigma", 0.0)),
        )
        if schedule.num_train_timesteps < 2 or not 0 < schedule.sigma_min < schedule.sigma_max or schedule.rho <= 0:
            raise ValueError(f"scheduler config: need num_train_timesteps >= 2, 0 < sigma_min < sigma_max, rho > 0; got {config}")
        if not 0 <= schedule.boundary_sigma <= schedule.sigma_min:
            raise ValueError(f"scheduler config: boundary_sigma must be in [0, sigma_min], got {schedule.boundary_sigma}")
        return schedule

    def to_scheduler_config(self) -> dict:
        """The scheduler config a distilled student is saved with (AnimateLCM-SVD's keys + boundary_sigma)."""
        from svd_fast.checkpoints.diffusers import DIFFUSERS_VERSION

        return {"_class_name": CONSISTENCY_SCHEDULER, "_diffusers_version": DIFFUSERS_VERSION,
                "num_train_timesteps": self.num_train_timesteps, "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max, "sigma_data": 1.0, "s_noise": self.s_noise, "rho": self.rho,
                "clip_denoised": self.clip_denoised, "boundary_sigma": self.boundary_sigma}

    def sigmas(self, steps: int, start: float | None = None):
        from svd_fast.sampling import get_sigmas_consistency

        return get_sigmas_consistency(steps, self.num_train_timesteps, self.sigma_min, self.sigma_max, self.rho, start)


def is_consistency_scheduler(config: dict | None) -> bool:
    return bool(config) and config.get("_class_name") == CONSISTENCY_SCHEDULER


def default_sampler(config: dict | None) -> str:
    """The sampler a checkpoint's scheduler config asks for: 'consistency' or SVD's 'euler'."""
    return "consistency" if is_consistency_scheduler(config) else "euler"
