"""Data curation as in the SVD paper (LVD -> LVD-F), on Ray Data: `python -m svd_fast.curate`.

Stages (each a plain per-clip function, wrapped as a Ray Data stage in `stages.py`):
probe/decode (probe.py, frames.py), cascaded cut detection (cuts.py), motion (motion.py),
text area (text.py), CLIP scores (clip_scores.py), captions (captions.py), percentile filters
(filters.py); outputs: manifest/errors parquet (pipeline.py), webdataset shards (shards.py,
with `iter_shards` for the training code) and a summary with histograms (summary.py).
"""
from .config import CurateConfig
from .pipeline import run
from .shards import iter_shards

__all__ = ["CurateConfig", "run", "iter_shards"]
