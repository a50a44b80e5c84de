"""Video files: MP4 through imageio's ffmpeg plugin (imageio-ffmpeg ships its own ffmpeg binary),
GIF through imageio's Pillow plugin, and side-by-side comparison grids with text labels.

Frames are accepted as what diffusers pipelines return: a `(frames, height, width, 3)` float array in
[0, 1] (`output_type="np"`), a uint8 array, a torch tensor of the same layout, or a list of PIL images.
"""
from __future__ import annotations

import os
import pathlib
from typing import List, Optional, Sequence, Union

import numpy as np

__all__ = ["to_uint8_frames", "mp4_available", "write_video", "tile_videos", "compare_grid", "write_compare"]

VIDEO_SUFFIXES = (".mp4", ".gif")


def to_uint8_frames(frames) -> np.ndarray:
    """frames: (F, H, W, 3) float in [0, 1], uint8, a torch tensor of that layout, or a list of PIL images.
    Returns (F, H, W, 3) uint8 (floats are clipped to [0, 1] and rounded)."""
    if isinstance(frames, (list, tuple)) and frames and hasattr(frames[0], "convert"):
        frames = np.stack([np.asarray(img.convert("RGB")) for img in frames])
    if hasattr(frames, "detach"):
        frames = frames.detach().float().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise ValueError(f"frames with shape {frames.shape} are invalid; allowed: (frames, height, width, 3)")
    if frames.shape[0] == 0:
        raise ValueError("frames with 0 frames are invalid; allowed: at least one frame")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if frames.dtype == np.uint8:
        return frames
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"frames of dtype {frames.dtype} are invalid; allowed: uint8 or float in [0, 1]")
    if not np.isfinite(frames).all():
        raise ValueError("frames contain NaN or inf; allowed: finite values in [0, 1]")
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def mp4_available() -> bool:
    """True when imageio can find an ffmpeg binary (the imageio-ffmpeg wheel bundles one)."""
    try:
        import imageio_ffmpeg
        return os.path.exists(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception:
        return False


def _pad_even(frames: np.ndarray) -> np.ndarray:
    # H.264 with yuv420p needs even width and height; pad by one black row/column instead of resizing.
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    return frames


def write_video(path: Union[str, os.PathLike], frames, fps: float = 24.0) -> str:
    """Write one video. path: ends in .mp4 (H.264, yuv420p, via ffmpeg) or .gif. Returns str(path).

    frames: see `to_uint8_frames`. fps: frames per second, > 0.
    """
    import imageio.v2 as imageio

    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"path={str(path)!r} has an unsupported suffix; allowed: {', '.join(VIDEO_SUFFIXES)}")
    if not (isinstance(fps, (int, float)) and not isinstance(fps, bool) and np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps={fps!r} is invalid; allowed: a number > 0")
    frames = to_uint8_frames(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mp4":
        if not mp4_available():
            raise RuntimeError("writing .mp4 needs ffmpeg; install imageio-ffmpeg (pip install imageio-ffmpeg) "
                               "or write a .gif")
        # macro_block_size=1 keeps our exact size (imageio would otherwise resize to multiples of 16).
        with imageio.get_writer(str(path), format="FFMPEG", mode="I", fps=float(fps), codec="libx264",
                                pixelformat="yuv420p", macro_block_size=1, quality=8,
                                ffmpeg_log_level="error") as writer:
            for frame in _pad_even(frames):
                writer.append_data(frame)
    else:
        # GIF frame durations are in milliseconds for imageio's Pillow plugin; loop=0 repeats forever.
        imageio.mimsave(str(path), list(frames), format="GIF", duration=1000.0 / float(fps), loop=0)
    return str(path)


def _label_strip(text: str, width: int, height: int = 16) -> np.ndarray:
    from PIL import Image, ImageDraw
    image = Image.new("RGB", (width, height), (0, 0, 0))
    ImageDraw.Draw(image).text((3, 2), text, fill=(255, 255, 255))
    return np.asarray(image)


def tile_videos(videos: Sequence, *, labels: Optional[Sequence[str]] = None, gap: int = 4) -> np.ndarray:
    """Place videos side by side. videos: each (F_i, H_i, W_i, 3); shorter ones hold their last frame and
    smaller ones are padded with black (never resampled, so no pixel is altered).
    labels: one caption per video, drawn in a strip above it. Returns (max F, H', W', 3) uint8."""
    videos = [to_uint8_frames(v) for v in videos]
    if not videos:
        raise ValueError("videos=[] is invalid; allowed: at least one video")
    if labels is not None and len(labels) != len(videos):
        raise ValueError(f"labels has {len(labels)} entries for {len(videos)} videos; allowed: one label per video")
    frames = max(v.shape[0] for v in videos)
    height = max(v.shape[1] for v in videos)
    columns = []
    for index, video in enumerate(videos):
        if video.shape[0] < frames:
            video = np.concatenate([video, np.repeat(video[-1:], frames - video.shape[0], axis=0)])
        video = np.pad(video, ((0, 0), (0, height - video.shape[1]), (0, 0), (0, 0)))
        if labels is not None:
            strip = _label_strip(str(labels[index]), video.shape[2])
            video = np.concatenate([np.repeat(strip[None], frames, axis=0), video], axis=1)
        columns.append(video)
        if index + 1 < len(videos) and gap:
            columns.append(np.zeros((frames, columns[-1].shape[1], gap, 3), np.uint8))
    return np.concatenate(columns, axis=2)


def compare_grid(rows: Sequence[Sequence], *, column_labels: Sequence[str], row_labels: Optional[Sequence[str]] = None,
                 gap: int = 4) -> np.ndarray:
    """rows[i][j]: video of row i (a sample), column j (a method). Returns one (F, H, W, 3) uint8 grid
    with the column labels (suffixed by the row label) above every cell."""
    if not rows:
        raise ValueError("rows=[] is invalid; allowed: at least one row of videos")
    tiles: List[np.ndarray] = []
    for index, row in enumerate(rows):
        if len(row) != len(column_labels):
            raise ValueError(f"row {index} has {len(row)} videos for {len(column_labels)} column labels; "
                             f"allowed: one video per column")
        suffix = f" - {row_labels[index]}" if row_labels is not None else ""
        tiles.append(tile_videos(row, labels=[f"{label}{suffix}" for label in column_labels], gap=gap))
    frames = max(t.shape[0] for t in tiles)
    width = max(t.shape[2] for t in tiles)
    stacked = []
    for index, tile in enumerate(tiles):
        if tile.shape[0] < frames:
            tile = np.concatenate([tile, np.repeat(tile[-1:], frames - tile.shape[0], axis=0)])
        tile = np.pad(tile, ((0, 0), (0, 0), (0, width - tile.shape[2]), (0, 0)))
        stacked.append(tile)
        if index + 1 < len(tiles) and gap:
            stacked.append(np.zeros((frames, gap, width, 3), np.uint8))
    return np.concatenate(stacked, axis=1)


def write_compare(path: Union[str, os.PathLike], rows: Sequence[Sequence], *, column_labels: Sequence[str],
                  row_labels: Optional[Sequence[str]] = None, fps: float = 24.0) -> str:
    """Write `compare_grid(rows, ...)` to path. A .mp4 path falls back to .gif (same stem) when no ffmpeg
    is available; returns the path actually written."""
    path = pathlib.Path(path)
    if path.suffix.lower() == ".mp4" and not mp4_available():
        path = path.with_suffix(".gif")
    return write_video(path, compare_grid(rows, column_labels=column_labels, row_labels=row_labels), fps=fps)
