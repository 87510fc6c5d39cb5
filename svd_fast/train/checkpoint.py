"""Training checkpoints: safetensors weights + full-shape optimizer state, written atomically.

<output_dir>/checkpoints/step-00000100/
    model.safetensors      UNet weights in diffusers names (fp32 master values; no adapter tensors)
    ema.safetensors        EMA of the trainable weights (when EMA is on)
    lora.safetensors       adapter weights and their config (trainable='lora')
    optimizer.safetensors  optimizer state as '<parameter>::<state>' full-shape tensors
    trainer_state.json     step, EMA update count, world size, ZeRO stage, the recipe
<output_dir>/checkpoints/latest   name of the newest complete checkpoint

Everything is gathered from ZeRO partitions into full shapes, so a run can resume with another
world size or ZeRO stage. A checkpoint is written into a temporary folder, synced to disk and
renamed when complete; `latest` is updated after that, and only then are checkpoints beyond the
newest K removed (each renamed out of the `step-*` namespace before it is deleted), so a kill at
any moment leaves the previous checkpoint usable and every `step-*` folder complete. A failed
write (a full disk) removes the partial folder and stops every rank with CheckpointWriteError.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from svd_fast.checkpoints.io import save_safetensors, write_json, write_text
from svd_fast.train import lora as lora_lib
from svd_fast.train.logs import log

PREFIX = "unet."  # the engine's module is DiffusionObjective(unet)
LATEST = "latest"
STATE = "trainer_state.json"  # written last: a checkpoint folder without it is not one


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (raised on every rank; the previous one is intact)."""


def checkpoint_root(output_dir) -> Path:
    return Path(output_dir) / "checkpoints"


def _unet_name(name: str) -> str:
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def gather_weights(engine) -> dict[str, torch.Tensor]:
    """Full fp32 UNet weights (diffusers names, adapters excluded). Collective: call on all ranks."""
    return {
        _unet_name(name): engine.full_param(name)
        for name in engine.named_params
        if not lora_lib.is_lora_name(name)
    }


def gather_trainable(engine) -> dict[str, torch.Tensor]:
    return {_unet_name(name): engine.full_param(name) for name in engine.trainable}


def save_checkpoint(output_dir, step: int, engine, ema, recipe, env, keep: int) -> Path | None:
    """Write checkpoint `step` (collective: every rank calls it; rank 0 writes). Returns its folder."""
    weights = gather_weights(engine)
    trainable = gather_trainable(engine)
    ema_state = ema.full_state_dict() if ema is not None else None
    optimizer_tensors, optimizer_meta = engine.optimizer_state()
    root = checkpoint_root(output_dir)
    final = root / f"step-{step:08d}"
    failure = None
    if env.is_main:
        tmp = root / f".{final.name}.tmp"
        try:
            root.mkdir(parents=True, exist_ok=True)
            _remove_leftovers(root)
            tmp.mkdir()
            save_safetensors(weights, tmp / "model.safetensors")
            if recipe.trainable == "lora":
                lora_lib.save_lora_tensors(trainable, recipe.lora, tmp / "lora.safetensors")
            if ema_state is not None:
                save_safetensors({_unet_name(k): v for k, v in ema_state.items()}, tmp / "ema.safetensors")
            save_safetensors(optimizer_tensors, tmp / "optimizer.safetensors", metadata={"meta": json.dumps(optimizer_meta)})
            write_json(tmp / STATE, {
                "step": step,
                "ema_updates": ema.num_updates if ema is not None else 0,
                "world_size": env.world_size,
                "zero_stage": engine.zero_stage,
                "recipe": json.loads(recipe.to_json()),
            })
            _fsync_folder(tmp)  # the data reaches the disk before the rename makes it a checkpoint
            if final.exists():
                _delete(final)
            os.replace(tmp, final)
            _fsync_folder(root, files=False)
            write_text(root / LATEST, final.name + "\n")
        except Exception as err:  # noqa: BLE001 - any failed write: clean up, then stop every rank alike
            shutil.rmtree(tmp, ignore_errors=True)  # a partial checkpoint would only take space
            previous, reason = _marked_checkpoint(root), _describe_write_error(err)
            remedy = "free disk space" if "No space left" in reason else "fix that"
            failure = (f"checkpoint {final.name} was not written to {root}: {reason}; the previous checkpoint "
                       f"({previous.name if previous else 'none'}) is intact; {remedy} and continue with --resume")
        else:
            _prune(root, keep)
    failure = _from_rank0(failure)
    if failure is not None:
        raise CheckpointWriteError(failure if env.is_main else f"rank 0 reported: {failure}")
    return final


def _describe_write_error(err: Exception) -> str:
    """One line saying what went wrong: the OS's words for OSError (ENOSPC: 'No space left on
    device'); safetensors reports I/O errors as SafetensorError with the OS's message inside."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror + (f" ({err.filename})" if err.filename else "")
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _from_rank0(value):
    """rank 0's `value` on every rank (a picklable object; collective)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _fsync_folder(folder: Path, files: bool = True) -> None:
    """fsync the files of `folder` and the folder itself (its entries), so a rename after this
    never publishes data that a power loss could still take back."""
    if files:
        for path in folder.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _delete(folder: Path) -> None:
    """Remove a checkpoint folder: renamed out of `step-*` first, so a kill during the (long,
    non-atomic) removal never leaves a half-deleted folder that looks like a checkpoint."""
    doomed = folder.with_name(f".{folder.name}.deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    """Temporary folders of writes or removals that a kill interrupted (one writer per run folder)."""
    for path in root.glob(".step-*"):
        if path.is_dir() and path.name.endswith((".tmp", ".deleting")):
            shutil.rmtree(path, ignore_errors=True)


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        _delete(old)


def _complete(path: Path) -> bool:
    return path.is_dir() and (path / STATE).is_file()


def _marked_checkpoint(root: Path) -> Path | None:
    marker = root / LATEST
    if not marker.is_file():
        return None
    path = root / marker.read_text().strip()
    return path if path.name.startswith("step-") and _complete(path) else None


def latest_checkpoint(output_dir) -> Path | None:
    """The newest complete checkpoint of a run folder, or None when it has none.

    `latest` names it; when that marker is missing or names no complete checkpoint (a copy of
    the folder without it, a hand edit), the complete `step-*` folder with the highest step is
    used instead. Temporary folders of interrupted writes are never candidates."""
    root = checkpoint_root(output_dir)
    marked = _marked_checkpoint(root)
    if marked is not None:
        return marked
    complete = sorted(p for p in root.glob("step-*") if _complete(p))
    if complete and (root / LATEST).is_file():
        log.warning("%s does not name a complete checkpoint; using %s", root / LATEST, complete[-1].name)
    return complete[-1] if complete else None


def resolve_checkpoint(path) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (its latest checkpoint)."""
    path = Path(path)
    if (path / STATE).is_file():
        return path
    found = latest_checkpoint(path) if path.is_dir() else None
    if found is None:
        raise FileNotFoundError(f"{path}: neither a checkpoint folder nor a run folder with checkpoints")
    return found


def read_tensors(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def read_trainer_state(ckpt: Path) -> dict:
    return json.loads((ckpt / "trainer_state.json").read_text())


def load_optimizer_file(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    path = ckpt / "optimizer.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {}).get("meta", "{}"))
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return tensors, meta


def checkpoint_unet_weights(ckpt: Path, which: str = "ema") -> dict[str, torch.Tensor]:
    """UNet weights of a checkpoint, with the EMA of the trainable ones when which='ema' (and
    the checkpoint has EMA). LoRA checkpoints give the base weights; adapters are in lora.safetensors."""
    weights = read_tensors(ckpt / "model.safetensors")
    ema_path = ckpt / "ema.safetensors"
    if which == "ema" and ema_path.is_file():
        ema = {k: v for k, v in read_tensors(ema_path).items() if not lora_lib.is_lora_name(k)}
        weights.update(ema)
    return weights


def init_unet_weights(path, which: str = "ema") -> dict[str, torch.Tensor]:
    """UNet weights to start a stage from: a run folder, a checkpoint folder, a diffusers model
    folder (its unet_ema/ when which='ema' and present) or a UNet .safetensors file."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"init_from {path}: expected a .safetensors UNet file or a folder")
        return read_tensors(path)
    if (path / "model_index.json").is_file():
        from svd_fast.checkpoints import load_components

        use_ema = which == "ema" and (path / "unet_ema").is_dir()
        return dict(load_components(path, use_ema=use_ema)["unet"].state_dict())
    if (path / "final" / "model_index.json").is_file() and latest_checkpoint(path) is None:
        return init_unet_weights(path / "final", which)
    return checkpoint_unet_weights(resolve_checkpoint(path), which)
