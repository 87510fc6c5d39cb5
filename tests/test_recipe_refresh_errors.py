"""`--refresh-card` on the recipes that have it: a wrong folder is a one-line usage error (exit 2),
before anything is loaded or measured."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "svd_fast" / "assets" / "default_model"


@pytest.mark.parametrize("recipe, extra, named", [
    ("default_model", ["--out", "{missing}"], "--out"),
    ("distill_consistency", ["--out", "{missing}"], "--out"),
    ("distill_consistency", ["--out", str(MODEL), "--teacher", "{missing}"], "--teacher"),
    ("multiview", ["--out", "{missing}"], "--out"),
    ("multiview", ["--out", str(MODEL), "--base", "{missing}"], "--base"),
    ("interpolation", ["--out", "{missing}"], "--out"),
    ("interpolation", ["--out", str(MODEL), "--base", "{missing}"], "--base"),
])
def test_a_wrong_folder_is_a_one_line_error(recipe, extra, named, tmp_path):
    missing = str(tmp_path / "no_model")
    args = [a.format(missing=missing) for a in extra]
    out = subprocess.run([sys.executable, str(REPO / "training" / "recipes" / f"{recipe}.py"), "--refresh-card", *args],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{recipe}.py: error: --refresh-card: {named} {missing} "), last
    assert not (tmp_path / "no_model").exists()  # nothing written
