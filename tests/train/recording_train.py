"""`python -m svd_fast.train` that also writes each rank's final weights (test helper, run as a script).

    torchrun ... tests/train/recording_train.py WEIGHTS_DIR --recipe ... --deepspeed ...

After training, every rank saves the parameters of the module it trained, as that rank holds
them, to WEIGHTS_DIR/rank<RANK>.safetensors, so a test can compare the ranks with each other and
with another run. The training code itself is unchanged: the engine classes are wrapped to keep
a reference to the engine the trainer builds.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import safetensors.torch  # noqa: E402

from svd_fast.train import engine as engine_lib  # noqa: E402
from svd_fast.train.__main__ import main  # noqa: E402

ENGINES = []


def _record(cls) -> None:
    original = cls.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        ENGINES.append(self)

    cls.__init__ = __init__


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for engine_class in (engine_lib.PlainEngine, engine_lib.DeepSpeedEngine):
        _record(engine_class)
    code = main(sys.argv[2:])
    if code == 0:
        (engine,) = ENGINES
        weights = {name: p.detach().float().cpu().contiguous() for name, p in engine.module.named_parameters()}
        out.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file(weights, str(out / f"rank{os.environ.get('RANK', '0')}.safetensors"))
    sys.exit(code)
