"""`python -m svd_fast.train` with one fault injected at an exact point (test helper, run as a script).

    SVD_FAST_TEST_FAULT=kill-rank:RANK:STEP      python tests/train/faulty_train.py --recipe ... --deepspeed ...
    SVD_FAST_TEST_FAULT=stop-rank:RANK:STEP      (the rank freezes with SIGSTOP instead: alive but hung)
    SVD_FAST_TEST_FAULT=kill-in-save:STEP:FILE   (rank 0 dies after writing half of FILE of checkpoint STEP)
    SVD_FAST_TEST_FAULT=enospc-in-save:STEP:FILE (that write fails as on a full disk, after half its bytes)

kill-rank/stop-rank strike in the middle of optimizer step STEP (1-based): after the rank's
forward pass (ZeRO-3 has gathered the weights with its peers), before its backward pass. The
training code itself is unchanged: the faults wrap the engine's micro-step and safetensors' writer.
"""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import safetensors.torch  # noqa: E402

from svd_fast.train import engine as engine_lib  # noqa: E402

# What safetensors raises when the disk fills up (measured on a 1 MiB tmpfs, safetensors 0.8.0):
# its own exception type, not OSError, with the OS error in the message.
ENOSPC_MESSAGE = "Error while serializing: I/O error: No space left on device (os error 28)"


def _strike_mid_step(rank: int, step: int, sig: int) -> None:
    original = engine_lib.DeepSpeedEngine.forward_backward
    calls = {"n": 0}

    def forward_backward(self, inputs, last_micro):
        calls["n"] += 1  # grad_accum=1 in the tests: one call per optimizer step
        if self.env.rank == rank and calls["n"] == step:
            self.engine(**inputs).mean()  # the forward pass and its parameter all-gathers
            os.kill(os.getpid(), sig)
        return original(self, inputs, last_micro)

    engine_lib.DeepSpeedEngine.forward_backward = forward_backward


def _strike_in_save(step: int, name: str, kind: str) -> None:
    original = safetensors.torch.save_file
    folder = f".step-{step:08d}.tmp"

    def save_file(tensors, filename, metadata=None):
        path = Path(filename)
        if path.parent.name != folder or not path.name.startswith(f".{name}"):
            return original(tensors, filename, metadata=metadata)
        data = safetensors.torch.save(tensors, metadata=metadata)
        with open(path, "wb") as handle:  # half of the file reaches the disk
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.fsync(handle.fileno())
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise safetensors.SafetensorError(ENOSPC_MESSAGE)

    safetensors.torch.save_file = save_file


def main() -> int:
    kind, *args = os.environ["SVD_FAST_TEST_FAULT"].split(":")
    if kind in ("kill-rank", "stop-rank"):
        _strike_mid_step(int(args[0]), int(args[1]), signal.SIGKILL if kind == "kill-rank" else signal.SIGSTOP)
    elif kind in ("kill-in-save", "enospc-in-save"):
        _strike_in_save(int(args[0]), args[1], kind.split("-")[0])
    else:
        raise SystemExit(f"unknown SVD_FAST_TEST_FAULT kind {kind!r}")
    from svd_fast.train.__main__ import main as train_main

    return train_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
