"""Faults in a 2-process DeepSpeed ZeRO-3 run (CPU, gloo): a rank killed or hung mid-step, a kill
while a checkpoint is written, a full disk while a checkpoint is written.

Every fault is injected at an exact point by tests/train/faulty_train.py (the training CLI with
the engine's micro-step or safetensors' writer wrapped). Ranks that must be watched one by one are
started without a launcher, with RANK/WORLD_SIZE set as a multi-node launcher sets them, so the
launcher cannot hide what a surviving rank does on its own (torchrun kills the others at once).
The uninterrupted run, shared by all tests, is the reference for losses, weights, EMA and
optimizer state.
"""
import json
import signal
import subprocess
import time

import pytest
import torch

from svd_fast.train import checkpoint as ckpt_lib
from svd_fast.train.engine import _free_port
from tests.train.conftest import PYTHON, REPO, subprocess_env, write_recipe_file

ZERO3 = str(REPO / "training" / "ds" / "zero3.json")
FAULTY = str(REPO / "tests" / "train" / "faulty_train.py")
STEPS = dict(batch_size=1, max_steps=6, checkpoint_every=2, keep_checkpoints=10, ema_decay=0.8)
CHECKPOINT_FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors")
WAIT_S = 600  # a hang guard: start-up ~15 s, 6 tiny steps ~10 s; a DeepSpeed op (re)build took up to 7 min here
# Kernels fixed, not chosen by timing: each process would otherwise time the candidates itself
# (a fresh cache in the test session) and may pick another one, which rounds differently; the
# runs compared here must do identical arithmetic (measured: bitwise equal losses then).
FIXED_KERNELS = {"SVD_FAST_TUNE": "0"}


def _env(**extra) -> dict:
    return subprocess_env(**FIXED_KERNELS, **extra)


def _recipe(tmp_path, name):
    return write_recipe_file(tmp_path / f"{name}.py", tmp_path / name, **STEPS), tmp_path / name


def _torchrun(recipe, *args, fault=None):
    """Both ranks under torchrun (which ends the other rank when one fails); returns the result."""
    entry = [FAULTY] if fault else ["-m", "svd_fast.train"]
    env = _env(**({"SVD_FAST_TEST_FAULT": fault} if fault else {}))
    proc = _popen([PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
                   *entry, "--recipe", str(recipe), "--deepspeed", ZERO3, *args], env, recipe.with_suffix(".torchrun"))
    code, out, err = _finish(proc, WAIT_S)
    return subprocess.CompletedProcess(proc.args, code, out, err)


def _start_ranks(recipe, fault, *args):
    """Two ranks as separate processes, no launcher watching them."""
    port = str(_free_port())
    return [_popen([PYTHON, FAULTY, "--recipe", str(recipe), "--deepspeed", ZERO3, *args],
                   _env(SVD_FAST_TEST_FAULT=fault, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=port), recipe.with_suffix(f".rank{rank}"))
            for rank in (0, 1)]


def _popen(cmd, env, stem):
    """Output goes to files, not pipes: a killed process's children cannot hold the test up."""
    out, err = open(f"{stem}.out", "w+"), open(f"{stem}.err", "w+")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err, text=True)
    proc.files = (out, err)
    return proc


def _finish(proc, timeout):
    """(returncode, stdout, stderr) of a process; one still running after `timeout` s is a hang:
    it is killed with every process it started, and the test fails."""
    try:
        proc.wait(timeout=timeout)
        hung = False
    except subprocess.TimeoutExpired:
        _kill(proc)
        hung = True
    out, err = (f.seek(0) or f.read() for f in proc.files)
    for f in proc.files:
        f.close()
    if hung:
        pytest.fail(f"{proc.args[1:4]} did not end within {timeout} s (hang); its stderr:\n{err[-3000:]}")
    return proc.returncode, out, err


def _kill(proc) -> None:
    """SIGKILL to the process and all its descendants (torchrun puts its workers in sessions of
    their own; SIGKILL also ends a stopped process)."""
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _losses(run_dir) -> dict[int, float]:
    records = [json.loads(line) for line in open(run_dir / "log.jsonl")]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _tensors(ckpt):
    return {name: ckpt_lib.read_tensors(ckpt / name) for name in CHECKPOINT_FILES}


def _distance(a: dict, b: dict) -> float:
    return float(sum((a[k].double() - b[k].double()).pow(2).sum() for k in a) ** 0.5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: checkpoints at steps 2, 4 and 6, losses of steps 1-6."""
    tmp = tmp_path_factory.mktemp("reference")
    recipe, run = _recipe(tmp, "straight")
    result = _torchrun(recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def _assert_same_run(run, reference, resumed_from: int):
    """Same per-step losses and the same step-6 weights, EMA and Adam moments as the reference.

    Both runs do the same operations in the same order on one machine (same world size, ZeRO
    stage and data plan), so they agree bit for bit (measured); the bound is a millionth of how
    far the two steps after the resume point moved each tensor set, so a lost or stale state
    (weights, EMA, Adam moments or step count from the wrong checkpoint) fails by orders of magnitude.
    """
    got, want = _losses(run), _losses(reference)
    assert sorted(got) == sorted(want) == list(range(1, 7))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=0), (step, got, want)
    final, expected = _tensors(run / "checkpoints" / "step-00000006"), _tensors(reference / "checkpoints" / "step-00000006")
    before = _tensors(reference / "checkpoints" / f"step-{resumed_from:08d}")
    for name in CHECKPOINT_FILES:
        moved = _distance(expected[name], before[name])
        apart = _distance(final[name], expected[name])
        print(f"{run.name} {name}: moved {moved:.3e} since step {resumed_from}, apart {apart:.3e}")
        assert moved > 1e-3 and apart <= 1e-6 * moved, (name, moved, apart)


def test_a_rank_killed_mid_step_stops_the_survivor_and_resume_matches(reference, tmp_path):
    """kill -9 of rank 1 in the middle of step 5 (after its forward pass, before its backward):
    rank 0 stops at once with a one-line error naming the step and the checkpoint to resume from
    (no hang, no traceback); --resume on 2 processes restarts from step 4 and ends as the
    uninterrupted run."""
    recipe, run = _recipe(tmp_path, "killed")
    started = time.monotonic()
    rank0, rank1 = _start_ranks(recipe, "kill-rank:1:5", "--collective-timeout", "120")
    code1, _, _ = _finish(rank1, WAIT_S)
    code0, _, err0 = _finish(rank0, 60)  # a dead peer closes its sockets: noticed well before the timeout
    assert code1 == -signal.SIGKILL, code1
    assert code0 == 1 and "Traceback" not in err0, err0[-3000:]
    lines = _error_lines(err0)
    assert len(lines) == 1 and lines[0].startswith(
        "error: rank 0: another process of the run died or stopped answering during step 5 ("), err0[-3000:]
    assert lines[0].endswith("; --resume restarts from step-00000004"), lines
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000004"]
    assert time.monotonic() - started < WAIT_S
    resumed = _torchrun(recipe, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["start_step"] == 4
    _assert_same_run(run, reference, resumed_from=4)


def test_a_hung_rank_is_stopped_by_the_collective_timeout(tmp_path):
    """A rank frozen (SIGSTOP) mid-step keeps its sockets open: only the watchdog can end the
    survivor. With --collective-timeout 8 rank 0 ends with the one-line error within seconds
    of it, instead of waiting forever (gloo's own default is 30 minutes)."""
    recipe, run = _recipe(tmp_path, "hung")
    rank0, rank1 = _start_ranks(recipe, "stop-rank:1:3", "--collective-timeout", "8")
    try:
        code0, _, err0 = _finish(rank0, WAIT_S)
    finally:
        _kill(rank1)
        _finish(rank1, 10)
    assert code0 == 1 and "Traceback" not in err0, err0[-3000:]
    lines = _error_lines(err0)
    assert len(lines) == 1 and "stopped answering during step 3" in lines[0], err0[-3000:]
    assert lines[0].endswith("--resume restarts from step-00000002"), lines


def test_b_checkpoint_killed_mid_write_is_never_used(reference, tmp_path):
    """Rank 0 is killed after writing half of step 4's optimizer state: the partial folder is
    never taken for a checkpoint, --resume starts from step 2, removes the leftover and ends as
    the uninterrupted run."""
    recipe, run = _recipe(tmp_path, "torn")
    killed = _torchrun(recipe, fault="kill-in-save:4:optimizer.safetensors")
    assert killed.returncode != 0
    root = run / "checkpoints"
    partial = list((root / ".step-00000004.tmp").iterdir())
    assert any(p.name.startswith(".optimizer.safetensors.tmp-") and p.stat().st_size > 0 for p in partial), partial
    assert not (root / "step-00000004").exists()
    assert ckpt_lib.latest_checkpoint(run) == root / "step-00000002"
    resumed = _torchrun(recipe, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["start_step"] == 2
    assert not (root / ".step-00000004.tmp").exists(), "the next save removes the leftover"
    _assert_same_run(run, reference, resumed_from=2)


def test_c_disk_full_while_saving_keeps_the_previous_checkpoint(reference, tmp_path):
    """The write of step 4's optimizer state fails as on a full disk after half its bytes: both
    ranks stop with one line saying so (rank 1 learns it from rank 0), the partial folder is
    removed, and step 2 is intact: byte-identical tensors to the uninterrupted run's step 2."""
    recipe, run = _recipe(tmp_path, "full")
    rank0, rank1 = _start_ranks(recipe, "enospc-in-save:4:optimizer.safetensors", "--collective-timeout", "120")
    (code0, _, err0), (code1, _, err1) = _finish(rank0, WAIT_S), _finish(rank1, 60)
    root = run / "checkpoints"
    for code, err, prefix in ((code0, err0, "error: "), (code1, err1, "error: rank 0 reported: ")):
        assert code == 1 and "Traceback" not in err, err[-3000:]
        lines = _error_lines(err)
        assert len(lines) == 1, err[-3000:]
        assert lines[0] == (f"{prefix}checkpoint step-00000004 was not written to {root}: SafetensorError: Error while "
                            "serializing: I/O error: No space left on device (os error 28); the previous checkpoint "
                            "(step-00000002) is intact; free disk space and continue with --resume"), lines
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000002"], "partial folder removed"
    assert ckpt_lib.latest_checkpoint(run) == root / "step-00000002"
    kept, expected = _tensors(root / "step-00000002"), _tensors(reference / "checkpoints" / "step-00000002")
    for name in CHECKPOINT_FILES:
        assert kept[name].keys() == expected[name].keys()
        assert all(torch.equal(kept[name][k], expected[name][k]) for k in kept[name]), name
    assert ckpt_lib.read_trainer_state(root / "step-00000002")["step"] == 2


def _fake_checkpoint(root, step, complete=True):
    folder = root / f"step-{step:08d}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    if complete:
        (folder / ckpt_lib.STATE).write_text("{}")
    return folder


def test_latest_checkpoint_skips_what_a_kill_can_leave_behind(tmp_path):
    """What `--resume` picks among the folders a kill at any point of save/prune can leave."""
    root = ckpt_lib.checkpoint_root(tmp_path)
    two = _fake_checkpoint(root, 2)
    four = _fake_checkpoint(root, 4)
    (root / ckpt_lib.LATEST).write_text("step-00000002\n")
    # Killed after the rename of step 4, before `latest` moved: the marker still names step 2.
    assert ckpt_lib.latest_checkpoint(tmp_path) == two
    # A marker naming a folder that is gone (or was never complete): the newest complete one.
    (root / ckpt_lib.LATEST).write_text("step-00000008\n")
    _fake_checkpoint(root, 6, complete=False)
    (root / ".step-00000010.tmp").mkdir()  # an interrupted write
    (root / ".step-00000012.deleting").mkdir()  # an interrupted removal
    assert ckpt_lib.latest_checkpoint(tmp_path) == four
    (root / ckpt_lib.LATEST).unlink()
    assert ckpt_lib.latest_checkpoint(tmp_path) == four
    assert ckpt_lib.latest_checkpoint(tmp_path / "nothing") is None
