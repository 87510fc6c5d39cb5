"""`kernels/` is svd_fast.kernels; run from the checkout (repository root first on sys.path, as
`python -m` and pytest put it) it is also importable as a top-level `kernels`, the name of Hugging
Face's library that transformers (>= 5.25 requires it) and diffusers import names from. There the
installed library must win, and without one the folder must read as "not installed"."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(code: str, *extra_paths: Path) -> str:
    paths = [str(REPO), *map(str, extra_paths)]
    out = subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = {paths!r}\n{code}"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_an_installed_kernels_library_takes_the_name(tmp_path):
    library = tmp_path / "site" / "kernels"
    library.mkdir(parents=True)
    (library / "__init__.py").write_text('__version__ = "9.9"\nCUDAProperties = "the library\'s"\n')
    (library / "layer.py").write_text('WHERE = "the library\'s layer"\n')
    printed = _run("from kernels import CUDAProperties\nimport kernels, kernels.layer\n"
                   "import svd_fast.kernels as ours\n"
                   "print(CUDAProperties, kernels.__version__, kernels.layer.WHERE, ours.get_backend(), "
                   "'reference' in sys.modules['svd_fast.kernels'].__dict__, "
                   "sorted(n for n in sys.modules if n.startswith('kernels.')))",
                   tmp_path / "site")
    assert printed == "the library's 9.9 the library's layer auto True ['kernels.layer']"


def test_without_the_library_the_folder_reads_as_not_installed():
    # the library may be installed here (transformers >= 5.25 pulls it in): hidden from the search
    # for it elsewhere on sys.path, as where it is not installed
    hide = ("import importlib.machinery as m\nfind = m.PathFinder.find_spec\n"
            "m.PathFinder.find_spec = lambda name, path=None, target=None: "
            "None if name == 'kernels' and path is not None else find(name, path, target)\n")
    printed = _run(hide + "import importlib.util, kernels\n"
                   "print(getattr(kernels, '__file__', None), getattr(kernels, '__version__', None), "
                   "hasattr(kernels, 'get_op'))")
    # this module stays (our API under the stray name) but has no file or version for probes to trust
    assert printed == "None None True"
