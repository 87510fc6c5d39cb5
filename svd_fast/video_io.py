"""Reading conditioning images and writing videos (mp4/webm via ffmpeg, gif, png frames).

Every write is atomic: the file is written next to its destination under a temporary name and
renamed into place, so an interrupted run never leaves a half-written video behind.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from svd_fast.atomic import atomic_path, temporary_sibling

VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".mkv"}
OUTPUT_SUFFIXES = VIDEO_SUFFIXES | {".gif", ".png"}


def _check_format(path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"unsupported output format {path.suffix!r} for {path}; use one of {sorted(OUTPUT_SUFFIXES)}")
    return path


def check_output_path(path) -> Path:
    """Fail early (before any sampling) on an output format save_video cannot write, or a folder
    it cannot write into (created when missing, then tried with a temporary file)."""
    path = _check_format(path)
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder: give a file name such as {path / 'video.mp4'}")
    with _named_in_errors(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # mkdir's own words ("File exists") would not say what is wrong
            raise OSError(f"{path.parent} is a file, not a folder") from None
        probe = temporary_sibling(path)
        probe.touch()
        probe.unlink()
    return path


def load_image(path) -> Image.Image:
    """Open an image as 8-bit RGB, upright: the EXIF orientation is applied; grayscale, palette and
    RGBA images are converted and 16/32-bit grayscale scaled (PIL's convert would clip it to
    white); images beyond PIL's decompression-bomb limit are refused with the reason."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"conditioning image not found: {path}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I"):  # 16-bit ("I;16...") or 32-bit ("I") integer grayscale
                values = np.asarray(img).astype(np.float64)
                top = 255.0 if values.max() <= 255 else 65535.0
                img = Image.fromarray((values / top * 255).clip(0, 255).round().astype(np.uint8))
            return img.convert("RGB")
    except Image.DecompressionBombError as err:
        raise ValueError(f"image too large: {path}: {err}") from err
    except (OSError, SyntaxError) as err:  # PIL raises SyntaxError for some malformed headers
        raise ValueError(f"cannot read image {path}: {err}") from err


def to_uint8(frames) -> np.ndarray:
    """(T, H, W, 3) floats in [0, 1], uint8 arrays, or a list of PIL images -> (T, H, W, 3) uint8."""
    if isinstance(frames, (list, tuple)) and frames and isinstance(frames[0], Image.Image):
        return np.stack([np.asarray(f.convert("RGB")) for f in frames])
    array = np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {array.shape}")
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return array


def save_video(frames, path, fps: float = 7.0) -> list[Path]:
    """Write frames to `path` by its extension; returns the files written.

    .mp4/.webm/.mov/.mkv: H.264 (VP9 for webm) through imageio-ffmpeg; .gif: animated GIF;
    .png: one file per frame, `<stem>_0000.png`, ... next to `path`.
    """
    path = _check_format(path)  # the folder is created and its errors named by the write itself
    frames = to_uint8(frames)
    suffix = path.suffix.lower()
    if suffix == ".png":
        written = []
        for i, frame in enumerate(frames):
            target = path.with_name(f"{path.stem}_{i:04d}.png")
            with _named_in_errors(target), atomic_path(target) as tmp:
                Image.fromarray(frame).save(tmp, format="PNG")
            written.append(target)
        return written
    with _named_in_errors(path), atomic_path(path) as tmp:
        if suffix == ".gif":
            images = [Image.fromarray(f) for f in frames]
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        else:  # one of VIDEO_SUFFIXES (checked above)
            _write_ffmpeg(frames, str(tmp), fps, codec="libvpx-vp9" if suffix == ".webm" else "libx264")
    return [path]


@contextmanager
def _named_in_errors(path: Path):
    """An OSError while writing names the file asked for, not the temporary beside it."""
    try:
        yield
    except OSError as err:
        named = OSError(f"cannot write {path}: {err.strerror or err}")
        named.errno = err.errno
        raise named from err


def _write_ffmpeg(frames: np.ndarray, path: str, fps: float, codec: str):
    import imageio.v2 as imageio

    # yuv420p needs even sizes: pad by edge replication rather than resize, so pixels stay exact.
    h, w = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    writer = imageio.get_writer(
        path, format="FFMPEG", fps=fps, codec=codec, quality=8, pixelformat="yuv420p", macro_block_size=1
    )
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()


def read_video(path) -> tuple[np.ndarray, float]:
    """All frames of a video file as (T, H, W, 3) uint8, and its frame rate. A missing file is a
    FileNotFoundError, a file that is not a readable video (or has no frames) a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        frames, fps = _read_gif(path) if path.suffix.lower() == ".gif" else _read_ffmpeg(path)
    except (OSError, RuntimeError, IndexError, SyntaxError) as err:  # what imageio / ffmpeg / PIL raise
        raise ValueError(f"cannot read video {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    if len(frames) == 0:
        raise ValueError(f"cannot read video {path}: it has no frames")
    return frames, fps


def _read_ffmpeg(path: Path) -> tuple[np.ndarray, float]:
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        fps = float(reader.get_meta_data().get("fps", 0.0))
        frames = [np.asarray(f) for f in reader]
        return (np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)), fps
    finally:
        reader.close()


def _read_gif(path) -> tuple[np.ndarray, float]:
    from PIL import Image, ImageSequence

    with Image.open(path) as gif:
        frames, durations = [], []
        for frame in ImageSequence.Iterator(gif):
            frames.append(np.asarray(frame.convert("RGB")))
            durations.append(frame.info.get("duration") or 0)
    # GIF writers (Pillow among them) merge identical consecutive frames into one frame shown
    # k times as long; expand them again so a video comes back with the frames it was written with.
    base = min((d for d in durations if d > 0), default=0)
    repeats = [max(1, round(d / base)) if base else 1 for d in durations]
    frames = [frame for frame, k in zip(frames, repeats) for _ in range(k)]
    return np.stack(frames), (1000.0 / base if base else 0.0)
