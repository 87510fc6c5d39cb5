"""Sampling jobs of the web demo: a queue that one worker thread drains, one job at a time.

A request is checked in full before it is queued (its numbers against LIMITS, its image decoded),
so bad input is answered at once and never reaches the worker. The worker writes each result
(an H.264 mp4 that browsers play, and the frames as lossless PNGs in a zip) into the job's folder
atomically; a job that fails records a one-line error and the worker goes on with the next.
"""
from __future__ import annotations

import io
import itertools
import os
import queue
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from svd_fast.app.engine import Engine, Lora, Settings, Speed
from svd_fast.checkpoints.io import atomic_path

VIDEO_NAME, FRAMES_NAME = "video.mp4", "frames.zip"


@dataclass
class Request:
    settings: Settings
    speed: Speed
    loras: tuple[Lora, ...]
    image: Image.Image


@dataclass
class Job:
    id: str
    request: Request
    folder: Path
    state: str = "queued"  # queued -> running -> done | error
    stage: str = "queued"
    progress: float = 0.0
    error: str | None = None
    timings: dict = field(default_factory=dict)

    def status(self, ahead: int) -> dict:
        status = {"id": self.id, "state": self.state, "stage": self.stage, "progress": round(self.progress, 4),
                  "error": self.error, "timings": self.timings, "ahead": ahead}
        if self.state == "done":
            status.update(video=f"/files/{self.id}/{VIDEO_NAME}", frames=f"/files/{self.id}/{FRAMES_NAME}",
                          fps=self.request.settings.fps)
        return status


class JobQueue:
    """Jobs by id, the worker thread that samples them in order, and the folder of their results."""

    def __init__(self, engine: Engine, outputs: Path):
        self.engine = engine
        self.outputs = Path(outputs)
        self.outputs.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, Job] = {}
        self._order: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # guards jobs/_order against the HTTP threads
        self._worker = threading.Thread(target=self._work, name="svd_fast-app-worker", daemon=True)
        self._worker.start()

    def submit(self, request: Request) -> Job:
        with self._lock:
            job_id = f"{next(self._ids):04d}-{os.urandom(3).hex()}"  # unguessable: results are served by id
            job = Job(job_id, request, self.outputs / job_id)
            self.jobs[job_id] = job
            self._order.append(job_id)
        self._queue.put(job)
        return job

    def status(self, job_id: str) -> dict | None:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            ahead = sum(1 for other in self._order[: self._order.index(job_id)]
                        if self.jobs[other].state in ("queued", "running"))
            return job.status(ahead)

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=60)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            job.state = "running"
            try:
                self._run(job)
                job.state, job.stage = "done", "done"
            except Exception as err:  # any failure is the job's, reported on the page; the server goes on
                job.state, job.stage = "error", "failed"
                job.error = (str(err).strip().splitlines() or [type(err).__name__])[0]

    def _run(self, job: Job) -> None:
        def on_progress(stage: str, fraction: float) -> None:
            job.stage, job.progress = stage, fraction

        r = job.request
        result = self.engine.sample(r.image, r.settings, r.speed, r.loras, on_progress=on_progress)
        job.stage = "writing the video"
        start = time.perf_counter()
        write_results(result.frames[0], job.folder, r.settings.fps)
        job.timings = {**result.timings, "write": time.perf_counter() - start}


def write_results(frames, folder: Path, fps: int) -> None:
    """frames (T, H, W, 3) in [0, 1] -> folder/video.mp4 (H.264, yuv420p) and folder/frames.zip (PNGs)."""
    from svd_fast.video_io import save_video, to_uint8

    save_video(frames, folder / VIDEO_NAME, fps=fps)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # PNG is compressed already
        for i, frame in enumerate(to_uint8(frames)):
            png = io.BytesIO()
            Image.fromarray(frame).save(png, format="PNG")
            archive.writestr(f"frame_{i:04d}.png", png.getvalue())
    with atomic_path(folder / FRAMES_NAME) as tmp:
        tmp.write_bytes(buffer.getvalue())
