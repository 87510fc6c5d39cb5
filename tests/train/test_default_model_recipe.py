"""training/recipes/default_model.py end to end at 1% of its steps: every part runs, the output is a
loadable model with the recipe's architecture and sampling defaults, and a second invocation on the
same work folder trains nothing again."""
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
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
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

    stage_logs = {name: (work / name / "log.jsonl").read_text() for name in ("stage1", "stage2", "stage3")}
    first_times = json.loads((work / "timings.json").read_text())
    _run(work, out)
    assert {name: (work / name / "log.jsonl").read_text() for name in stage_logs} == stage_logs  # nothing retrained
    times = json.loads((work / "timings.json").read_text())
    for part in ("vae_and_image_encoder", "default-stage2-video"):
        assert times["wall_s"][part] - first_times["wall_s"][part] < 1.0  # skipped parts add (almost) nothing
