"""Training of SVD: the EDM v-objective, the paper's three stages as recipes, DeepSpeed ZeRO.

`python -m svd_fast.train --recipe training/recipes/<stage>.py [--deepspeed ds.json]`; see
svd_fast/train/__main__.py. Modules: recipe (dataclasses), data (clips), procedural (generated
videos), objective (loss and conditioning), engine (DeepSpeed / plain), trainable (modes,
checkpointing), lora, ema, checkpoint, export, memory (estimate), logs, trainer (the loop).
"""
