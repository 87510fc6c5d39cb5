"""Web demo: `python -m svd_fast.app [--port P] [--host H] [--model PATH]`.

A page to upload an image, set the main sampling controls (frames, steps, seed, fps, motion
bucket, guidance, speed mode, LoRA), follow the progress and get the video, its stage timings and
download links; one sampling job at a time, the server answering throughout.

Why a small stdlib server rather than gradio: the demo needs one page, four JSON routes and file
downloads, which `http.server` gives with no new dependency (gradio brings FastAPI, uvicorn,
pydantic and a front end of its own, about 100 MB, whose generated DOM a browser test would have to
chase across gradio versions). The page is plain HTML with fixed element ids, so the headless
Chromium test drives exactly what a user clicks. Pieces: engine.py (the loaded pipeline, speed
mode and LoRA, progress; shared with svd_fast.comfyui), jobs.py (queue, worker, results),
server.py (HTTP), page.html.
"""
from svd_fast.app.engine import Engine, Lora, Settings, Speed
from svd_fast.app.server import DemoServer

__all__ = ["DemoServer", "Engine", "Lora", "Settings", "Speed"]
