"""The diffusers pipeline-folder layout (what StableVideoDiffusionPipeline.save_pretrained writes).

    model_index.json
    unet/            config.json + diffusion_pytorch_model.safetensors   (UNetSpatioTemporalConditionModel)
    vae/             config.json + diffusion_pytorch_model.safetensors   (AutoencoderKLTemporalDecoder)
    image_encoder/   config.json + model.safetensors                     (transformers CLIPVisionModelWithProjection)
    feature_extractor/preprocessor_config.json                           (CLIPImageProcessor)
    scheduler/       scheduler_config.json                               (EulerDiscreteScheduler; AnimateLCM-SVD's
                     AnimateLCMSVDStochasticIterativeScheduler selects the consistency sampler, svd_fast.consistency)
    unet_ema/        optional: EMA weights of the UNet, as diffusers' training scripts save them

Our modules use diffusers' parameter names, so weights load with an identity mapping.
This module never imports diffusers: the configs are plain JSON handled by svd_fast.config.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from svd_fast.checkpoints.io import CheckpointError, TensorSource, open_tensors, save_safetensors, write_json, write_text
from svd_fast.conditioner import CLIP_MEAN, CLIP_STD
from svd_fast.consistency import FEW_STEP_DEFAULTS, ConsistencySchedule, is_consistency_scheduler
from svd_fast.config import CONDITIONINGS, RENDERS, ImageEncoderConfig, SVDConfig, UNetConfig, VAEConfig

PIPELINE_CLASS = "StableVideoDiffusionPipeline"
TEXT_PIPELINE_CLASS = "SVDTextToVideoPipeline"
"""model_index.json class of a text model (text_encoder/ + tokenizer/ instead of image_encoder/ +
feature_extractor/; svd_fast.checkpoints.text_encoder); diffusers has no pipeline of this name"""
# The model's sampling defaults (SVDConfig: size, frames, steps, fps, motion bucket, guidance):
# diffusers' layout has no place for them, so they live in a file of ours at the folder root,
# which diffusers ignores. It also names the model's conditioning (SVDConfig.conditioning).
SAMPLING_DEFAULTS_FILE = "svd_fast_sampling.json"
SAMPLING_DEFAULT_TYPES = {"num_frames": int, "num_inference_steps": int, "height": int, "width": int, "fps": int,
                          "motion_bucket_id": int, "max_guidance_scale": float, "image_init_sigma": float,
                          "keep_first_frame": bool, "render": str,
                          "prior_noise": float, "lead_sigma": float}
OPTIONAL_SAMPLING_DEFAULTS = {"image_init_sigma", "lead_sigma"}  # may be null: the feature is off
DIFFUSERS_VERSION = "0.24.0"  # first release with SVD; written into the configs we save
MODEL_INDEX = {
    "_class_name": PIPELINE_CLASS,
    "_diffusers_version": DIFFUSERS_VERSION,
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
    "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
}
# SVD's scheduler: EDM Karras sigmas in [0.002, 700], v-prediction with continuous timesteps (svd_facts 5).
DEFAULT_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": DIFFUSERS_VERSION,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}
FEATURE_EXTRACTOR_CONFIG = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": list(CLIP_MEAN),
    "image_processor_type": "CLIPImageProcessor",
    "image_std": list(CLIP_STD),
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 224},
}
# weights file names diffusers / transformers use, with an optional variant ("fp16") and shard index
_WEIGHTS = re.compile(r"(diffusion_pytorch_model|model|pytorch_model)(?:\.([\w-]+))?\.(safetensors|bin)(\.index\.json)?")


def is_pipeline_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def find_weights(folder: Path) -> Path:
    """The weights file of a component folder: no variant before a variant, safetensors before
    .bin, a single file before a shard index."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: missing component folder")
    found = [(m, p) for p in sorted(folder.iterdir()) if (m := _WEIGHTS.fullmatch(p.name))]
    if not found:
        raise CheckpointError(f"{folder}: no weights file (diffusion_pytorch_model/model[.variant].safetensors or .bin)")
    variants = {m[2] for m, _ in found}
    if None not in variants and len(variants) > 1:
        raise CheckpointError(f"{folder}: only variant weights, several of them ({sorted(variants)}); keep one")
    ranked = sorted(found, key=lambda mp: (mp[0][2] is not None, mp[0][3] == "bin", mp[0][4] is not None))
    return ranked[0][1]


def _check_class(cfg: dict, expected: str, where: Path, hint: str = "") -> None:
    name = cfg.get("_class_name", expected)
    if name != expected:
        raise CheckpointError(f"{where}: is a {name}, expected {expected}{hint}")


def read_config(folder: Path, numerics: str) -> tuple[SVDConfig, dict]:
    """(SVDConfig, scheduler config dict) of a pipeline folder, with clear errors for other pipelines."""
    index = read_json(folder / "model_index.json")
    text = index.get("_class_name") == TEXT_PIPELINE_CLASS
    if not text:
        _check_class(index, PIPELINE_CLASS, folder / "model_index.json", ": svd_fast loads Stable Video Diffusion pipelines")
    unet_cfg = read_json(folder / "unet" / "config.json")
    _check_class(unet_cfg, "UNetSpatioTemporalConditionModel", folder / "unet" / "config.json")
    vae_cfg = read_json(folder / "vae" / "config.json")
    _check_class(vae_cfg, "AutoencoderKLTemporalDecoder", folder / "vae" / "config.json",
                 " (the per-frame AutoencoderKL of SVD's image-decoder variant is not supported)")
    clip_cfg = {} if text else read_json(folder / "image_encoder" / "config.json")  # text: no image tower
    architectures = clip_cfg.get("architectures") or ["CLIPVisionModelWithProjection"]
    if "CLIPVisionModelWithProjection" not in architectures:
        raise CheckpointError(f"{folder / 'image_encoder' / 'config.json'}: is {architectures}, expected CLIPVisionModelWithProjection")
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    scheduler = read_json(scheduler_path) if scheduler_path.exists() else dict(DEFAULT_SCHEDULER_CONFIG)
    parts = {}
    for name, build in (
        ("unet", lambda: UNetConfig.from_diffusers(unet_cfg, numerics=numerics)),
        ("vae", lambda: VAEConfig.from_diffusers(vae_cfg)),
        ("image_encoder", lambda: ImageEncoderConfig.from_transformers(clip_cfg) if clip_cfg else ImageEncoderConfig()),
    ):
        try:
            parts[name] = build()
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{folder / name / 'config.json'}: {exc}") from exc
    defaults = {"num_frames": parts["unet"].num_frames}
    if is_consistency_scheduler(scheduler):  # AnimateLCM-SVD style: few-step defaults unless the folder says otherwise
        try:
            ConsistencySchedule.from_scheduler_config(scheduler)
        except ValueError as exc:
            raise CheckpointError(f"{scheduler_path}: {exc}") from exc
        defaults.update(FEW_STEP_DEFAULTS)
    defaults_path = folder / SAMPLING_DEFAULTS_FILE
    if defaults_path.exists():
        stored = {k: v for k, v in read_json(defaults_path).items() if k in SAMPLING_DEFAULT_TYPES}
        for key, value in stored.items():
            defaults[key] = _sampling_default(defaults_path, key, value)
        conditioning = read_json(defaults_path).get("conditioning", "image")
        if conditioning not in CONDITIONINGS:
            raise CheckpointError(f"{defaults_path}: conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        defaults["conditioning"] = conditioning
    if text and defaults.get("conditioning") != "text":
        raise CheckpointError(f"{folder}: a {TEXT_PIPELINE_CLASS} folder whose {SAMPLING_DEFAULTS_FILE} does not say "
                              f"conditioning 'text'")
    return SVDConfig(**parts, **defaults), scheduler


def _sampling_default(path: Path, key: str, value):
    """A stored sampling default, checked against its type (a clear error names the file and key)."""
    kind = SAMPLING_DEFAULT_TYPES[key]
    if value is None and key in OPTIONAL_SAMPLING_DEFAULTS:
        return None
    if key == "render":
        if value not in RENDERS:
            raise CheckpointError(f"{path}: render must be one of {RENDERS}, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise CheckpointError(f"{path}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or kind(value) != value:
        raise CheckpointError(f"{path}: {key} must be a non-negative {kind.__name__}, got {value!r}")
    return kind(value)


def open_component(folder: Path, name: str) -> TensorSource:
    return open_tensors(find_weights(folder / name))


def _clip_config_json(config: ImageEncoderConfig, dtype: str) -> str:
    return json.dumps(config.to_json_dict(dtype), indent=2, sort_keys=True) + "\n"


def write_sampling_defaults(folder: Path, config: SVDConfig) -> None:
    """The folder's svd_fast_sampling.json from `config` (atomic): the sampler settings a saved model
    carries, and its conditioning."""
    write_json(folder / SAMPLING_DEFAULTS_FILE,
               {**{k: getattr(config, k) for k in SAMPLING_DEFAULT_TYPES}, "conditioning": config.conditioning})


def write_folder(folder: Path, config: SVDConfig, unet: dict, vae: dict, image_encoder: dict | None = None,
                 scheduler_config: dict | None = None, ema_unet: dict | None = None) -> None:
    """Write every file of a pipeline folder into `folder` (an empty, temporary folder). A text model
    (no image_encoder) gets its text_encoder/ and tokenizer/ from svd_fast.checkpoints.text_encoder."""
    unet_config = {**config.unet.to_diffusers(), "_diffusers_version": DIFFUSERS_VERSION}
    vae_config = {**config.vae.to_diffusers(), "_diffusers_version": DIFFUSERS_VERSION}
    models = [("unet", unet_config, unet), ("vae", vae_config, vae)]
    if ema_unet is not None:
        models.append(("unet_ema", unet_config, ema_unet))
    for name, cfg, state in models:
        (folder / name).mkdir()
        write_json(folder / name / "config.json", cfg)
        save_safetensors(state, folder / name / "diffusion_pytorch_model.safetensors")
    files = [("scheduler", "scheduler_config.json", scheduler_config or DEFAULT_SCHEDULER_CONFIG)]
    if image_encoder is not None:
        (folder / "image_encoder").mkdir()
        dtype = str(next(iter(image_encoder.values())).dtype).removeprefix("torch.")
        write_text(folder / "image_encoder" / "config.json", _clip_config_json(config.image_encoder, dtype))
        save_safetensors(image_encoder, folder / "image_encoder" / "model.safetensors")
        files.append(("feature_extractor", "preprocessor_config.json", FEATURE_EXTRACTOR_CONFIG))
    for name, file, content in files:
        (folder / name).mkdir()
        write_json(folder / name / file, content)
    write_sampling_defaults(folder, config)
    if image_encoder is None:
        index = {k: v for k, v in MODEL_INDEX.items() if k not in ("image_encoder", "feature_extractor")}
        index.update(_class_name=TEXT_PIPELINE_CLASS, text_encoder=["transformers", "CLIPTextModel"],
                     tokenizer=["transformers", "AutoTokenizer"])
        write_json(folder / "model_index.json", index)
    else:
        write_json(folder / "model_index.json", MODEL_INDEX)
