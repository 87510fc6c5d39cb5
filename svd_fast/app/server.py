"""The demo's HTTP server (stdlib ThreadingHTTPServer): the page, a small JSON API and the results.

    GET  /                    the page (page.html)
    GET  /api/config          model, defaults, LIMITS, speed modes, bundled LoRA adapters
    POST /api/jobs?frames=..  body: the image file; 202 {"id"} or 400 {"error": one line}
    GET  /api/jobs/ID         state, stage, progress, timings, links to the results
    GET  /files/ID/NAME       video.mp4 / frames.zip (byte ranges, which video elements ask for)

Each request runs on its own thread, so the page, the API and downloads keep answering while the
worker samples.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from svd_fast.app.engine import LIMITS, SPEED_MODES, Engine, Lora, Settings, Speed, bundled_loras
from svd_fast.app.jobs import FRAMES_NAME, VIDEO_NAME, JobQueue, Request

PAGE = Path(__file__).resolve().parent / "page.html"
MAX_UPLOAD = 64 * 2**20  # bytes; larger uploads are refused before they are read
CONTENT_TYPES = {VIDEO_NAME: "video/mp4", FRAMES_NAME: "application/zip"}
SETTINGS_KINDS = {"frames": int, "steps": int, "seed": int, "fps": int, "motion_bucket": int,
                  "min_guidance": float, "max_guidance": float, "noise_aug": float, "image_init_sigma": float,
                  "keep_first_frame": int, "warp_render": int}
FILE_PATH = re.compile(r"^/files/([0-9a-f-]+)/([a-z0-9.]+)$")


def parse_request(query: dict[str, str], body: bytes, uploads: Path, engine: Engine) -> Request:
    """The job a POST asks for, or a ValueError in one line (numbers out of LIMITS, not an image, ...)."""
    from svd_fast.video_io import load_image

    defaults = engine.defaults()
    settings = Settings(**{name: _number(query, name, getattr(defaults, name), kind)
                           for name, kind in SETTINGS_KINDS.items()}, camera=query.get("camera", "")).checked()
    speed = Speed(query.get("speed", "exact"), _number(query, "cache_interval", Speed.cache_interval, int)).checked()
    loras = _loras(query)
    if not body:
        raise ValueError("no image: choose an image file first")
    name = query.get("filename") or "the upload"
    fd, path = tempfile.mkstemp(prefix=".upload.", dir=uploads)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(body)
        try:
            image = load_image(path)
        except ValueError as err:  # name the user's file, not the server's temporary copy
            raise ValueError(str(err).replace(path, name)) from None
    finally:
        os.remove(path)
    return Request(settings, speed, loras, image)


def _number(query: dict, name: str, default, kind):
    text = query.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text) if kind is int else float(text)
    except ValueError:
        raise ValueError(f"{name.replace('_', ' ')} must be {'an integer' if kind is int else 'a number'}, "
                         f"got {text!r}") from None
    if kind is not int and not math.isfinite(value):
        raise ValueError(f"{name.replace('_', ' ')} must be a finite number, got {text!r}")
    return value


def _loras(query: dict) -> tuple[Lora, ...]:
    """The adapter picked from the bundled list and/or typed as a path, both at one scale."""
    scale = _number(query, "lora_scale", 1.0, float)
    bundled = bundled_loras()
    picked = []
    if query.get("lora"):
        if query["lora"] not in bundled:
            raise ValueError(f"unknown bundled LoRA adapter {query['lora']!r}")
        picked.append(str(bundled[query["lora"]]))
    if query.get("lora_path", "").strip():
        picked.append(query["lora_path"].strip())
    return tuple(Lora(path, scale).checked() for path in picked)


class Handler(BaseHTTPRequestHandler):
    server: "DemoServer"
    protocol_version = "HTTP/1.1"  # keep-alive: the page polls the job status several times a second

    def log_message(self, format, *args):  # the demo's console shows jobs, not every poll
        pass

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/":
            return self._send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
        if path == "/api/config":
            return self._json(HTTPStatus.OK, self.server.config())
        if path.startswith("/api/jobs/"):
            status = self.server.jobs.status(path.removeprefix("/api/jobs/"))
            if status is None:
                return self._json(HTTPStatus.NOT_FOUND, {"error": "no such job"})
            return self._json(HTTPStatus.OK, status)
        match = FILE_PATH.match(path)
        if match and match.group(2) in CONTENT_TYPES:
            job = self.server.jobs.jobs.get(match.group(1))
            if job is not None and job.state == "done":
                return self._send_file(job.folder / match.group(2), CONTENT_TYPES[match.group(2)])
        self._json(HTTPStatus.NOT_FOUND, {"error": f"not found: {path}"})

    def do_POST(self):
        url = urlsplit(self.path)
        if url.path != "/api/jobs":
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"not found: {url.path}"})
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_UPLOAD:
            self.close_connection = True  # the body is not read
            return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                              {"error": f"image file too large: {length / 2**20:.1f} MiB, the limit is "
                                        f"{MAX_UPLOAD // 2**20} MiB"})
        body = self.rfile.read(length)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            request = parse_request(query, body, self.server.uploads, self.server.engine)
        except ValueError as err:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
        job = self.server.jobs.submit(request)
        self._json(HTTPStatus.ACCEPTED, {"id": job.id})

    def _json(self, status: HTTPStatus, payload: dict):
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_file(self, path: Path, content_type: str):
        """The whole file, or the one byte range asked for (video elements seek with ranges)."""
        data = path.read_bytes()
        headers = {"Accept-Ranges": "bytes"}
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if match and (match.group(1) or match.group(2)):
            first, last = match.groups()
            start = int(first) if first else max(0, len(data) - int(last))
            end = min(int(last), len(data) - 1) if first and last else len(data) - 1
            if start >= len(data) or start > end:
                return self._send(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", content_type,
                                  {"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(HTTPStatus.PARTIAL_CONTENT, data[start : end + 1], content_type, headers)
        self._send(HTTPStatus.OK, data, content_type, headers)


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 7860, outputs: str | Path | None = None):
        super().__init__((host, port), Handler)
        self.engine = engine
        outputs = Path(outputs) if outputs is not None else Path(tempfile.mkdtemp(prefix="svd_fast_app_"))
        self.jobs = JobQueue(engine, outputs)
        self.uploads = outputs / ".uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def config(self) -> dict:
        defaults = self.engine.defaults()
        cfg = self.engine.pipe.config
        return {"model": str(self.engine.model_path), "size": [cfg.width, cfg.height],
                "defaults": {**defaults.__dict__, "speed": "exact", "cache_interval": Speed.cache_interval,
                             "lora_scale": 1.0},
                "limits": {name: list(bounds) for name, bounds in LIMITS.items()}, "speed_modes": list(SPEED_MODES),
                "loras": sorted(bundled_loras())}

    def start(self) -> threading.Thread:
        """Serve on a background thread (tests, notebooks); serve_forever() blocks instead."""
        thread = threading.Thread(target=self.serve_forever, name="svd_fast-app-http", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.jobs.close()
