"""Evaluation of video models (python -m svd_fast.eval; the command's docstring has the usage and
the paper's UCF-101 protocol): Fréchet distance (frechet), the I3D network of FVD (i3d), FVD
feature extractors (features), CLIP score (clip_score), per-video figures (video_scores), inputs
(inputs), sampling a model's videos (generate), and the JSON/table/plot outputs (report)."""
