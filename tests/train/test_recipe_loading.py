"""`python -m svd_fast.train --recipe FILE`: what is not a recipe is a one-line error naming the file."""
import subprocess
import sys

import pytest

from svd_fast.train.recipe import Recipe, load_recipe


@pytest.mark.parametrize("name, text, message", [
    ("missing.py", None, "no such file"),
    ("photo.png", "garbage", "a recipe is a Python file (.py)"),
    ("empty.py", "x = 1\n", "must define a function recipe()"),
    ("wrong.py", "def recipe():\n    return {'lr': 1}\n", "recipe() returned dict, not a Recipe"),
])
def test_what_is_not_a_recipe_is_refused(tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises((ValueError, FileNotFoundError), match=r"--recipe .*" + message.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(path)
    out = subprocess.run([sys.executable, "-m", "svd_fast.train", "--recipe", str(path)], capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert message in out.stderr.strip().splitlines()[-1]


def test_a_recipe_file_builds_its_recipe(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text("from svd_fast.train.recipe import Recipe\n\ndef recipe():\n    return Recipe(name='tiny', output_dir='runs/tiny', max_steps=3)\n")
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe) and recipe.name == "tiny" and recipe.max_steps == 3
