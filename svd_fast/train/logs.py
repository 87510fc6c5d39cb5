"""Training logs: a tqdm progress line, a JSONL file of step records, optional TensorBoard.

Only rank 0 writes. Each record holds the step, loss, gradient norm, learning rate, samples/s and
peak memory (CUDA allocator peak on GPU, peak resident set size of the process on CPU).
"""
from __future__ import annotations

import json
import logging
import os
import resource
import sys
from pathlib import Path

import torch

log = logging.getLogger("svd_fast.train")


def setup_console_logging(rank: int) -> None:
    """Warnings and info from svd_fast.train on stderr (rank 0 only, to avoid duplicate lines)."""
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO if rank == 0 else logging.ERROR)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory so far: CUDA allocated bytes on GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _truncate_after(path: str, step: int) -> None:
    """Drop records of steps after `step` (a resumed run logs them again), atomically."""
    if not os.path.exists(path):
        return
    from svd_fast.checkpoints.io import write_text

    kept = []
    with open(path) as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if record.get("step", 0) <= step:
                kept.append(json.dumps(record) + "\n")
    write_text(path, "".join(kept))


class TrainingLog:
    def __init__(self, output_dir, enabled: bool, total_steps: int, start_step: int, tensorboard: bool):
        self.enabled = enabled
        self.bar = None
        self.file = None
        self.writer = None
        if not enabled:
            return
        from tqdm.auto import tqdm

        Path(output_dir).mkdir(parents=True, exist_ok=True)
        path = os.path.join(output_dir, "log.jsonl")
        _truncate_after(path, start_step)
        self.file = open(path, "a", buffering=1)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"))

    def step(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", gnorm=f"{record['grad_norm']:.3g}",
                             sps=f"{record['samples_per_s']:.2f}")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{key}", value, record["step"])

    def tick(self) -> None:
        """One optimizer step done (every step; records are written every log_every steps)."""
        if self.enabled:
            self.bar.update(1)

    def event(self, record: dict) -> None:
        """A non-step record (checkpoint written, sample saved, skipped data)."""
        if self.enabled:
            self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        self.file.close()
        if self.writer is not None:
            self.writer.close()
