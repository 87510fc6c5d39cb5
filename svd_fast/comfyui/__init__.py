"""svd_fast as a ComfyUI custom-node package: loader, accelerated sampler, LoRA, interpolation.

Install (svd_fast must be importable from ComfyUI's Python): put a one-file custom node in
ComfyUI/custom_nodes/, e.g. svd_fast_nodes.py containing

    from svd_fast.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

(nodes.py says which parts of ComfyUI's node contract the classes follow.)
"""
from svd_fast.comfyui.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
