"""svd_fast.atomic: every file svd_fast writes (videos, frames, checkpoints, JSON, the media and
kernel caches, bench results) appears whole or not at all, with the permissions the umask gives
any new file. tempfile.mkstemp, used before, made them 0600: outputs other users of a shared
folder could not read."""
import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from svd_fast.atomic import atomic_path, temporary_sibling
from svd_fast.checkpoints.io import save_safetensors, write_json
from svd_fast.video_io import save_video

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _writers(folder: Path) -> list[Path]:
    """Files written by each of svd_fast's writers into `folder`."""
    sys.path.insert(0, str(REPO))
    from bench.harness import write_json as bench_write_json

    frames = np.random.default_rng(0).random((3, 16, 16, 3))
    written = [*save_video(frames, folder / "clip.mp4", fps=8), *save_video(frames, folder / "clip.gif"),
               *save_video(frames, folder / "frames.png")]
    save_safetensors({"w": torch.ones(2)}, folder / "weights.safetensors")
    write_json(folder / "card.json", {"a": 1})
    bench_write_json(folder / "bench.json", {"b": 2})
    return [*written, folder / "weights.safetensors", folder / "card.json", folder / "bench.json"]


def test_written_files_get_the_umask_permissions_and_no_temporary_is_left(umask, tmp_path):
    files = _writers(tmp_path)
    assert len(files) == 8  # mp4, gif, 3 pngs, safetensors, 2 JSON
    for path in files:
        assert _mode(path) == 0o666 & ~umask, (path.name, oct(_mode(path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)  # no .tmp- leftovers
    assert json.loads((tmp_path / "bench.json").read_text()) == {"b": 2}


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_temporary_name_is_hidden_unique_and_keeps_the_suffix(tmp_path):
    a, b = temporary_sibling(tmp_path / "clip.mp4"), temporary_sibling(tmp_path / "clip.mp4")
    assert a != b and a.parent == tmp_path and a.name.startswith(".clip.mp4.tmp-") and a.suffix == ".mp4"
