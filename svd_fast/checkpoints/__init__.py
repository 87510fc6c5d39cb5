"""Checkpoints: diffusers pipeline folders and sgm single files, loaded strictly and with low memory.

    from svd_fast.checkpoints import load_components, save_components
    parts = load_components("svd_xt.safetensors", dtype=torch.bfloat16, device="cuda")
    save_components(parts, "svd_xt_diffusers", layout="diffusers")

io.py reads/writes tensors and loads them into meta-built modules; diffusers.py and sgm.py are
the two layouts (sgm as key maps onto diffusers names, open_clip.py for the CLIP tower).
"""
from svd_fast.checkpoints.components import LAYOUTS, detect_layout, load_components, save_components
from svd_fast.checkpoints.io import CheckpointError

__all__ = ["LAYOUTS", "CheckpointError", "detect_layout", "load_components", "save_components"]
