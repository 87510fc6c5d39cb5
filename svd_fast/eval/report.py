"""The evaluation's outputs: a printed table and metrics.png (one panel per metric: a bar per
video and the mean as a dashed line; FVD, one number per run, in the title), written atomically.
metrics.json is written by the CLI (svd_fast.checkpoints.io.write_json, atomic)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from svd_fast.eval.video_scores import FIELDS


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if math.isfinite(value) else ("inf" if value > 0 else str(value))


def table(result: dict) -> str:
    """One row per video and a mean row, the columns the result has."""
    rows = result["videos"]
    columns = [f for f in FIELDS if any(f in r for r in rows.values())]
    header = ["video"] + [f"{FIELDS[c][0]} ({FIELDS[c][1]})" if FIELDS[c][1] else FIELDS[c][0] for c in columns]
    body = [[name] + [_cell(r.get(c)) for c in columns] for name, r in rows.items()]
    body.append(["mean"] + [_cell(result["summary"][c]["mean"]) for c in columns])
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
             for line in [header] + body]
    lines.insert(1, "-" * len(lines[0]))
    if result.get("fvd"):
        fvd = result["fvd"]
        lines.append(f"FVD ({fvd['features']} features, {fvd['frames']} frames, {fvd['videos']} vs "
                     f"{fvd['reference_videos']} videos): {fvd['value']:.4g}")
    return "\n".join(lines)


def plot(result: dict, path) -> None:
    """metrics.png, written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    from svd_fast.checkpoints.io import atomic_path

    rows = result["videos"]
    names = list(rows)
    columns = [f for f in FIELDS if any(f in r for r in rows.values())]
    fig, axes = plt.subplots(len(columns), 1, figsize=(max(6.0, 0.6 * len(names) + 2), 2.2 * len(columns) + 0.8),
                             squeeze=False)
    for ax, column in zip(axes[:, 0], columns):
        values = np.array([rows[n].get(column, np.nan) for n in names], np.float64)
        shown = np.where(np.isfinite(values), values, np.nan)  # inf PSNR (identical frames) is not drawn
        ax.bar(range(len(names)), np.nan_to_num(shown), color="#4c72b0")
        mean = result["summary"][column]["mean"]
        if math.isfinite(mean):
            ax.axhline(mean, color="#dd8452", linestyle="--")
        title, unit = FIELDS[column]
        ax.set_ylabel(unit or "score")
        ax.set_title(f"{title} (dashed: mean {_cell(mean)})", fontsize=10)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names if ax is axes[-1, 0] else [""] * len(names), rotation=30, ha="right", fontsize=8)
    fvd = result.get("fvd")
    fig.suptitle(f"{len(names)} videos" + (f" | FVD ({fvd['features']}) {fvd['value']:.2f}" if fvd else ""))
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
