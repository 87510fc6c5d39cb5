"""Two nodes simulated on this machine: two torchrun launcher groups (--nnodes 2, --node_rank 0/1,
one process each) meet over 127.0.0.1 with gloo and train the tiny model with DeepSpeed ZeRO-2,
as two machines would (the README's multi-node launch). Both ranks must end with the same
weights, and those weights and the logged losses must be a single process's with the same global
batch (1 clip on each node vs 2 clips in one process).
"""
import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from svd_fast.train import checkpoint as ckpt_lib
from svd_fast.train.engine import _free_port
from svd_fast.train.fake_trace import kernel_backend
from svd_fast.train.trainer import train
from tests.train.conftest import PYTHON, REPO, make_recipe, subprocess_env, write_recipe_file

ZERO2 = str(REPO / "training" / "ds" / "zero2.json")
WORKER = str(REPO / "tests" / "train" / "recording_train.py")
STEPS = 3
BACKEND = "reference"
"""one kernel set on both sides: `auto` picks kernels by timing, which differ in rounding"""
# Same engine and math, other summation order (two per-clip gradients averaged by an all-reduce vs
# one 2-clip batch). The losses agree to fp32 rounding (measured <1e-6 relative). The final weights
# differ by 2.8% (L2) of how far the 3 steps moved them (measured): the last update is the one no
# logged loss sees, and Adam's first steps move each weight by about +-lr whatever the gradient's
# size, so a rounding-level gradient difference can flip a step. A lost or double-counted clip, a
# wrong average or ranks out of step change the losses by >1e-2 and the weights by ~30%.
LOSS_RTOL = 1e-5
WEIGHT_RTOL = 0.05


def _losses(run_dir) -> dict[int, float]:
    records = [json.loads(line) for line in open(run_dir / "log.jsonl")]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _pretrained(tmp_path) -> str:
    """A run folder of the tiny model after 20 plain steps. A fresh model zeroes each residual
    branch's last layer, so the weights behind it get gradients that are exactly zero in one
    summation order and rounding noise in another, which Adam turns into full +-lr steps; after
    a few steps every gradient is well above rounding."""
    recipe = make_recipe(tmp_path / "pretrained", max_steps=20, checkpoint_every=20)
    with kernel_backend(BACKEND):
        train(recipe)
    return recipe.output_dir


def _launch(args, **env) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, *args], cwd=REPO, env=subprocess_env(SVD_FAST_BACKEND=BACKEND, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_simulated_nodes_match_one_process(tmp_path):
    init = _pretrained(tmp_path)
    two = write_recipe_file(tmp_path / "two.py", tmp_path / "two", batch_size=1, max_steps=STEPS, init_from=init,
                            init_weights="model")
    one = write_recipe_file(tmp_path / "one.py", tmp_path / "one", batch_size=2, max_steps=STEPS, init_from=init,
                            init_weights="model")
    port = _free_port()
    runs = {}
    for node_rank in (0, 1):  # two launcher groups: what `torchrun` on each of two machines runs
        runs[f"node {node_rank}"] = _launch(
            ["-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node_rank), "--nproc_per_node", "1",
             "--master_addr", "127.0.0.1", "--master_port", str(port),
             WORKER, str(tmp_path / "weights_two"), "--recipe", str(two), "--deepspeed", ZERO2])
    # The single-process reference: the same engine, 2 clips per step instead of 1 per node.
    runs["single process"] = _launch([WORKER, str(tmp_path / "weights_one"), "--recipe", str(one), "--deepspeed", ZERO2],
                                     MASTER_PORT=str(_free_port()))
    for what, proc in runs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{what} failed:\n{err[-3000:]}"

    rank0, rank1 = (load_file(str(tmp_path / "weights_two" / f"rank{r}.safetensors")) for r in (0, 1))
    reference = load_file(str(tmp_path / "weights_one" / "rank0.safetensors"))
    assert rank0.keys() == rank1.keys() == reference.keys()
    for name in rank0:  # ZeRO-2 all-gathers the updated partitions: bitwise the same weights everywhere
        assert torch.equal(rank0[name], rank1[name]), name
    losses_two, losses_one = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert sorted(losses_two) == sorted(losses_one) == list(range(1, STEPS + 1))
    for step in losses_one:
        assert losses_two[step] == pytest.approx(losses_one[step], rel=LOSS_RTOL), (step, losses_one, losses_two)
    start = {ckpt_lib.PREFIX + k: v for k, v in ckpt_lib.init_unet_weights(init, "model").items()}
    moved = sum(float((reference[k] - start[k]).pow(2).sum()) for k in reference) ** 0.5
    apart = sum(float((rank0[k] - reference[k]).pow(2).sum()) for k in reference) ** 0.5
    assert moved > 1e-2 and apart < WEIGHT_RTOL * moved, (moved, apart)
