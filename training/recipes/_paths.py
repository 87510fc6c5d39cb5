"""Where the full-size recipes find their inputs (environment variables, so one recipe file serves
every machine; override single fields with `--set` instead when that is simpler).

SVD_COMPONENTS  diffusers SVD folder whose VAE and CLIP image encoder are used (frozen)
SVD_DATA        curated webdataset shards (svd_fast.curate output) or a folder of videos
SVD_RUNS        where the three stages write their run folders (default: runs/)
SVD_INIT        weights stage 1 starts from (a diffusers folder, run folder or UNet .safetensors);
                unset: stage 1 starts from SVD_COMPONENTS' UNet
"""
import os


def runs(stage: str) -> str:
    return os.path.join(os.environ.get("SVD_RUNS", "runs"), stage)


def components() -> str | None:
    return os.environ.get("SVD_COMPONENTS")


def data_source() -> dict:
    """DataConfig source/path: shards when SVD_DATA holds .tar files, else a video folder."""
    path = os.environ.get("SVD_DATA", "data/shards")
    has_tars = os.path.isdir(path) and any(name.endswith(".tar") for name in os.listdir(path))
    return {"source": "shards" if has_tars or path.endswith(".tar") else "folder", "path": path}


def init_weights() -> str | None:
    return os.environ.get("SVD_INIT") or components()
