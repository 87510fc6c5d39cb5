"""What the evaluation reads: a folder of videos, optional prompts, optional input images.

Videos: every .mp4/.webm/.mov/.mkv/.avi/.gif file in the folder, plus PNG frame sequences named
`<name>_0000.png, <name>_0001.png, ...` (what svd_fast.video_io writes for `--out x.png`); a
video's name is its file stem (the sequence's prefix). Prompts and input images are matched to a
video by that name, or by the name without a trailing `_seed<N>` (the sampled videos of one image).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svd_fast.video_io import VIDEO_SUFFIXES

SUFFIXES = VIDEO_SUFFIXES | {".avi", ".gif"}
FRAME_PNG = re.compile(r"^(?P<name>.+)_(?P<index>\d{4,})$")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass
class Video:
    name: str
    path: Path
    frames: np.ndarray  # (T, H, W, 3) uint8
    fps: float


def find_videos(folder) -> dict[str, list[Path]]:
    """{name: [file]} for video files, {name: [frame pngs in order]} for PNG sequences."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"video folder not found: {folder}")
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        suffix = path.suffix.lower()
        if suffix in SUFFIXES and path.is_file():
            found.setdefault(path.stem, []).append(path)
        elif suffix == ".png" and (match := FRAME_PNG.match(path.stem)):
            found.setdefault(match["name"], []).append(path)
    clashes = [n for n, paths in found.items() if len(paths) > 1 and paths[0].suffix.lower() != ".png"]
    if clashes:
        raise ValueError(f"{folder}: two videos are called {clashes[0]!r} ({', '.join(p.name for p in found[clashes[0]])})")
    if not found:
        raise ValueError(f"no videos in {folder} (looked for {', '.join(sorted(SUFFIXES))} and <name>_0000.png frames)")
    return found


def read_one(name: str, paths: list[Path]) -> Video:
    """One video: a video file, or PNG frames <name>_0000.png, ... (read_video's and load_image's
    errors name the file and the reason)."""
    from svd_fast.video_io import load_image, read_video

    if paths[0].suffix.lower() != ".png":
        frames, fps = read_video(paths[0])
        return Video(name, paths[0], frames, fps)
    images = [np.asarray(load_image(p)) for p in paths]
    if len({image.shape for image in images}) > 1:
        raise ValueError(f"cannot read video {paths[0]}: its PNG frames differ in size")
    return Video(name, paths[0], np.stack(images), 0.0)


def load_videos(folder) -> list[Video]:
    return [read_one(name, paths) for name, paths in find_videos(folder).items()]


def base_name(name: str) -> str:
    return re.sub(r"_seed\d+$", "", name)


def match(name: str, table: dict):
    """table[name], else table[name without _seed<N>], else None."""
    return table.get(name, table.get(base_name(name)))


def load_prompts(path) -> dict[str, str]:
    """JSON {name or file name: prompt}, or text lines `name<TAB>prompt`; keys reduced to stems."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            table = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"prompts file {path}: invalid JSON: {err}") from err
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise ValueError(f"prompts file {path}: expected a JSON object {{video name: prompt}}")
    else:
        table = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise ValueError(f"prompts file {path}, line {number}: expected NAME<TAB>PROMPT")
            key, prompt = line.split("\t", 1)
            table[key.strip()] = prompt.strip()
    return {Path(k).stem if Path(k).suffix.lower() in SUFFIXES else k: v for k, v in table.items()}


def load_input_images(folder) -> dict[str, Path]:
    """{stem: path} of the images in a folder (the conditioning images of the videos)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    images = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
    if not images:
        raise ValueError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return images
