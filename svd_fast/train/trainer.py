"""The training loop: build the model and engine from a recipe, run steps, checkpoint, export."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from svd_fast.checkpoints.io import write_text
from svd_fast.train import checkpoint as ckpt_lib
from svd_fast.train import lora as lora_lib
from svd_fast.train.data import BatchPlan, build_dataset, micro_batch_loader
from svd_fast.train.distill import ConsistencyDistiller, ConsistencyObjective
from svd_fast.train.ema import EMA
from svd_fast.train.engine import (DEFAULT_COLLECTIVE_TIMEOUT_S, DeepSpeedEngine, PeerFailure, PlainEngine,
                                   init_distributed, is_collective_failure, resolve_deepspeed_config)
from svd_fast.train.logs import TrainingLog, log, peak_memory_bytes, setup_console_logging
from svd_fast.train.objective import DiffusionObjective, prepare_inputs
from svd_fast.train.recipe import Recipe
from svd_fast.train.trainable import enable_gradient_checkpointing, set_trainable


def zero_init_outputs(unet: nn.Module) -> None:
    """Zero the last layer of every residual branch and the UNet's output conv, as sgm initialises
    a fresh VideoUNet (zero_module): a new model starts as the identity on each block's input."""
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith(("spatial_res_block.conv2", "temporal_res_block.conv2", "proj_out")) or name == "conv_out":
                for p in module.parameters(recurse=False):
                    p.zero_()


def load_parts(recipe: Recipe, device) -> dict:
    """config, a fresh or initialised UNet, and the frozen VAE and image encoder."""
    from svd_fast.conditioner import build_image_encoder
    from svd_fast.unet import VideoUNet
    from svd_fast.vae import TemporalVAE

    config = recipe.model
    torch.manual_seed(recipe.seed)
    if recipe.components:
        from svd_fast.checkpoints import load_components

        parts = load_components(recipe.components)
        for name in ("vae", "image_encoder"):
            if getattr(parts["config"], name) != getattr(config, name):
                raise ValueError(f"recipe.components {recipe.components}: its {name} config differs from recipe.model.{name}")
        vae, image_encoder, scheduler = parts["vae"], parts["image_encoder"], parts["scheduler_config"]
    else:
        vae, image_encoder, scheduler = TemporalVAE(config.vae), build_image_encoder(config.image_encoder), None
    unet = VideoUNet(config.unet)
    if recipe.init_from:
        weights = ckpt_lib.init_unet_weights(recipe.init_from, recipe.init_weights)
        _load_unet(unet, weights, f"init_from {recipe.init_from}")
    else:
        zero_init_outputs(unet)
    for frozen in (vae, image_encoder):
        frozen.to(device).eval().requires_grad_(False)
    return {"config": config, "unet": unet, "vae": vae, "image_encoder": image_encoder, "scheduler_config": scheduler}


def _load_unet(unet: nn.Module, weights: dict, what: str) -> None:
    own = {k: tuple(v.shape) for k, v in unet.state_dict().items() if not lora_lib.is_lora_name(k)}
    missing, unexpected = own.keys() - weights.keys(), weights.keys() - own.keys()
    reshaped = sorted(k for k in own.keys() & weights.keys() if tuple(weights[k].shape) != own[k])
    if missing or unexpected or reshaped:
        raise ValueError(f"{what}: UNet weights do not fit recipe.model.unet: {len(missing)} missing "
                         f"(e.g. {sorted(missing)[:3]}), {len(unexpected)} unexpected (e.g. {sorted(unexpected)[:3]}), "
                         f"{len(reshaped)} with other shapes (e.g. {reshaped[:3]})")
    unet.load_state_dict(weights, strict=False)


def lr_at(recipe: Recipe, step: int) -> float:
    warmup = recipe.optim.warmup_steps
    return recipe.optim.lr * (min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0)


def _mean_over_ranks(value: float) -> float:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def _cuda_reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def train(recipe: Recipe, deepspeed_config: str | None = None, resume: str | bool = False,
          collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S) -> dict:
    """Run (or continue) a training run; returns a summary of it (rank 0's view).

    When another process of a distributed run dies or hangs (a collective fails, or makes no
    progress for `collective_timeout_s`), every surviving rank stops with PeerFailure naming
    the step and the checkpoint a resume starts from."""
    progress = {"step": None, "log": None}
    try:
        return _train(recipe, deepspeed_config, resume, collective_timeout_s, progress)
    except Exception as err:
        if progress["log"] is not None:
            progress["log"].close()  # ends the progress bar's line, so the error starts its own line
        if dist.is_initialized() and dist.get_world_size() > 1 and is_collective_failure(err):
            raise _peer_failure(err, recipe.output_dir, progress["step"]) from err
        raise


def _train(recipe: Recipe, deepspeed_config, resume, collective_timeout_s: float, progress: dict) -> dict:
    recipe.validate()
    env = init_distributed(use_deepspeed=deepspeed_config is not None, timeout_s=collective_timeout_s)
    setup_console_logging(env.rank)
    out = Path(recipe.output_dir)
    ckpt = _resume_checkpoint(recipe, resume)

    parts = load_parts(recipe, env.device)
    unet = parts["unet"]
    distiller = ConsistencyDistiller(unet.to(env.device), recipe.distill) if recipe.distill is not None else None
    if distiller is not None:
        parts["scheduler_config"] = recipe.distill.schedule().to_scheduler_config()  # the student's own grid
    set_trainable(unet, recipe.trainable, recipe.lora)
    if ckpt is not None:
        _load_unet(unet, ckpt_lib.read_tensors(ckpt / "model.safetensors"), f"resume {ckpt}")
        if recipe.trainable == "lora":
            lora_lib.load_lora_weights(unet, ckpt / "lora.safetensors")
    if recipe.gradient_checkpointing:
        enable_gradient_checkpointing(unet)
    model = (ConsistencyObjective(unet, recipe.distill) if distiller else DiffusionObjective(unet)).train()
    if deepspeed_config is not None:
        ds_config = resolve_deepspeed_config(deepspeed_config, recipe, env.world_size)
        engine = DeepSpeedEngine(model, recipe, env, ds_config)
    else:
        engine = PlainEngine(model, recipe, env)
    ema = EMA(engine.trainable, recipe.ema_decay) if recipe.ema_decay else None
    start_step = 0
    if ckpt is not None:
        start_step = _restore(ckpt, engine, ema)
        log.info("resumed from %s at step %d", ckpt, start_step)

    dataset = build_dataset(recipe.data)
    plan = BatchPlan(len(dataset), recipe.batch_size, recipe.grad_accum, env.world_size, env.rank, recipe.seed)
    batches = micro_batch_loader(dataset, plan, start_step, recipe.data.num_workers)
    tlog = progress["log"] = TrainingLog(out, env.is_main, recipe.max_steps, start_step, recipe.tensorboard)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "recipe.json", recipe.to_json() + "\n")
    global_batch = recipe.batch_size * recipe.grad_accum * env.world_size
    losses_seen = []
    train_start = time.perf_counter()
    for step in range(start_step, recipe.max_steps):
        progress["step"] = step + 1
        lr = lr_at(recipe, step)
        engine.set_lr(lr)
        _cuda_reset_peak(env.device)
        started = time.perf_counter()
        micro_losses = []
        for micro in range(recipe.grad_accum):
            batch_step, batch_micro, batch = next(batches)
            assert (batch_step, batch_micro) == (step, micro), "data plan out of step with the trainer"
            inputs = prepare_inputs(batch, parts["vae"], parts["image_encoder"], recipe.objective, env.device,
                                    conditioning=recipe.model.conditioning)
            if distiller is not None:
                if micro == 0:
                    distiller.load_target(_target_weights(engine, ema))
                inputs = distiller.training_inputs(inputs, batch["seed"])
            micro_losses.append(float(engine.forward_backward(inputs, last_micro=micro == recipe.grad_accum - 1)))
        grad_norm = engine.optimizer_step()
        if ema is not None:
            ema.update()
        loss = _mean_over_ranks(sum(micro_losses) / len(micro_losses))
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step + 1}; lower optim.lr or check the data")
        elapsed = time.perf_counter() - started
        losses_seen.append(loss)
        tlog.tick()
        if (step + 1) % recipe.log_every == 0 or step == start_step or step + 1 == recipe.max_steps:
            tlog.step({"step": step + 1, "loss": loss, "grad_norm": grad_norm, "lr": lr,
                       "samples_per_s": global_batch / elapsed, "step_time_s": elapsed,
                       "peak_memory_bytes": peak_memory_bytes(env.device)})
        done = step + 1
        if done % recipe.checkpoint_every == 0 or done == recipe.max_steps:
            path = ckpt_lib.save_checkpoint(out, done, engine, ema, recipe, env, recipe.keep_checkpoints)
            tlog.event({"event": "checkpoint", "step": done, "path": str(path)})
        if recipe.sample_every and done % recipe.sample_every == 0:
            _write_sample(recipe, engine, parts, dataset, env, out / "samples" / f"step-{done:08d}.gif")
    tlog.close()
    summary = {"steps": recipe.max_steps, "start_step": start_step, "last_loss": losses_seen[-1] if losses_seen else None,
               "train_seconds": time.perf_counter() - train_start, "output_dir": str(out)}
    if recipe.export_final and (recipe.max_steps > start_step or not (out / "final" / "model_index.json").is_file()):
        export_final(recipe, engine, ema, parts, env, out / "final")
    if dist.is_initialized():
        dist.barrier()
    return summary


def _peer_failure(err: Exception, output_dir, step: int | None) -> PeerFailure:
    """One line for a lost peer: which rank saw it, at which step, and where a resume starts."""
    try:
        resume_from = ckpt_lib.latest_checkpoint(output_dir)
    except OSError:
        resume_from = None
    cause = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    when = f"during step {step}" if step else "before the first step"
    where = f"--resume restarts from {resume_from.name}" if resume_from else "no checkpoint yet: --resume starts over"
    return PeerFailure(f"rank {dist.get_rank()}: another process of the run died or stopped answering {when} "
                       f"({cause}); {where}")


def _target_weights(engine, ema) -> dict:
    """The consistency target network: the EMA of the student, else the student itself (collective)."""
    if ema is None:
        return ckpt_lib.gather_weights(engine)
    return {ckpt_lib._unet_name(k): v for k, v in ema.full_state_dict().items()}


def _resume_checkpoint(recipe: Recipe, resume) -> Path | None:
    if not resume:
        return None
    if resume is True or resume == "auto":
        found = ckpt_lib.latest_checkpoint(recipe.output_dir)
        if found is None:
            log.info("--resume: no checkpoint in %s yet; starting from the beginning", recipe.output_dir)
        return found
    return ckpt_lib.resolve_checkpoint(resume)


def _restore(ckpt: Path, engine, ema) -> int:
    state = ckpt_lib.read_trainer_state(ckpt)
    prefixed = {ckpt_lib.PREFIX + k: v for k, v in ckpt_lib.read_tensors(ckpt / "model.safetensors").items()}
    if (ckpt / "lora.safetensors").is_file():
        prefixed.update({ckpt_lib.PREFIX + k: v for k, v in lora_lib.read_lora(ckpt / "lora.safetensors")[1].items()})
    engine.restore_master_weights(prefixed)
    engine.load_optimizer_state(*ckpt_lib.load_optimizer_file(ckpt))
    if ema is not None:
        ema_path = ckpt / "ema.safetensors"
        if not ema_path.is_file():
            raise FileNotFoundError(f"{ckpt}: the recipe uses EMA but the checkpoint has no ema.safetensors")
        ema_state = {ckpt_lib.PREFIX + k: v for k, v in ckpt_lib.read_tensors(ema_path).items()}
        ema.load_full_state_dict(ema_state, state["ema_updates"])
    return int(state["step"])


def _final_unet_weights(engine, ema) -> tuple[dict, dict | None]:
    """(model weights, EMA weights or None), full UNet state dicts; collective."""
    weights = ckpt_lib.gather_weights(engine)
    if ema is None:
        return weights, None
    averaged = {ckpt_lib._unet_name(k): v for k, v in ema.full_state_dict().items()}
    return weights, {**weights, **{k: v for k, v in averaged.items() if not lora_lib.is_lora_name(k)}}


def export_final(recipe: Recipe, engine, ema, parts: dict, env, path: Path) -> None:
    """A diffusers model folder (unet/, unet_ema/ with EMA, vae/, image_encoder/) at `path`;
    LoRA runs also get path/lora.safetensors (EMA adapters when EMA is on)."""
    from svd_fast.checkpoints import save_components

    weights, ema_weights = _final_unet_weights(engine, ema)
    adapters = ckpt_lib.gather_trainable(engine) if recipe.trainable == "lora" else None
    if adapters is not None and ema is not None:
        adapters = {ckpt_lib._unet_name(k): v for k, v in ema.full_state_dict().items()}
    if not env.is_main:
        return
    components = {"config": parts["config"], "unet": weights, "vae": parts["vae"],
                  "image_encoder": parts["image_encoder"], "scheduler_config": parts["scheduler_config"]}
    save_components(components, path, layout="diffusers", overwrite=True,
                    ema_unet=ema_weights if recipe.trainable != "lora" else None)
    if adapters is not None:
        lora_lib.save_lora_tensors(adapters, recipe.lora, path / "lora.safetensors")
    log.info("exported %s", path)


def _write_sample(recipe: Recipe, engine, parts: dict, dataset, env, path: Path) -> None:
    """A short video from the conditioning frame of data item 0, with the current weights."""
    from svd_fast.pipeline import SVDPipeline
    from svd_fast.unet import VideoUNet
    from svd_fast.video_io import save_video

    weights = ckpt_lib.gather_weights(engine)
    adapters = ckpt_lib.gather_trainable(engine) if recipe.trainable == "lora" else None
    if not env.is_main:
        return
    unet = VideoUNet(recipe.model.unet)
    unet.load_state_dict(weights, strict=True)
    if adapters is not None:
        lora_lib.attach_lora(unet, recipe.lora)
        unet.load_state_dict(adapters, strict=False)
        lora_lib.merge_lora(unet)
    unet.to(env.device)
    pipe = SVDPipeline(unet, parts["vae"], parts["image_encoder"], parts["config"])
    pipe.set_progress_bar_config(disable=True)
    first = dataset[(0, 0)]["frames"][0]
    frames = pipe(((first + 1) / 2).clamp(0, 1), height=recipe.data.height, width=recipe.data.width,
                  num_frames=recipe.data.num_frames, num_inference_steps=recipe.sample_steps,
                  generator=torch.Generator().manual_seed(0), output_type="np").frames[0]
    save_video(frames, path, fps=8)
    log.info("sample video %s", path)
