"""The web demo end to end in headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): upload, generate, the video element's frames against a direct SVDPipeline call, the
download links, a screenshot, bad input; and the server's one-job-at-a-time queue over HTTP."""
from __future__ import annotations

import io
import json
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from svd_fast.app import DemoServer, Engine
from svd_fast.sample import DEFAULT_MODEL
from test_sample_cli import _huge_png_header

EXAMPLE = Path(__file__).resolve().parent.parent / "assets" / "example.png"
SEED, STEPS = 7, 6
TIMEOUT = 300  # seconds for one job on a busy 2-core machine (about 2 s when idle)


def browser_binaries() -> tuple[str, str]:
    """chromium and chromedriver. Missing, the test fails where scripts/setup.sh --dev installs
    them (a machine with apt-get, as CI); elsewhere it is skipped with the reason."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    if shutil.which("apt-get"):
        pytest.fail("chromium/chromedriver missing although apt-get is here: bash scripts/setup.sh --dev installs them")
    pytest.skip("no chromium/chromedriver and no apt-get to install them (scripts/setup.sh --dev)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = DemoServer(Engine(), port=0, outputs=tmp_path_factory.mktemp("app_outputs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = browser_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900",
                "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def wait_for(condition, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def open_page(driver, server):
    driver.get(server.url)
    wait_for(lambda: driver.find_element("id", "model").text.startswith("model:"), "the page's config", 30)


def fill(driver, **values):
    for name, value in values.items():
        element = driver.find_element("id", name)
        element.clear()
        element.send_keys(str(value))


def generate(driver, image: Path):
    driver.find_element("id", "image").send_keys(str(image))
    driver.find_element("id", "generate").click()


def error_text(driver) -> str:
    return driver.find_element("id", "error").text


def reference_pipe():
    from svd_fast.pipeline import SVDPipeline

    pipe = SVDPipeline.from_pretrained(DEFAULT_MODEL, torch_dtype="auto")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_frames(frames: int, pipe=None, **overrides) -> np.ndarray:
    """uint8 (T, H, W, 3) from a direct SVDPipeline call with the page's settings."""
    from svd_fast.video_io import load_image, to_uint8

    pipe = pipe or reference_pipe()
    cfg = pipe.config
    settings = dict(num_frames=frames, num_inference_steps=STEPS, fps=cfg.fps, motion_bucket_id=cfg.motion_bucket_id,
                    max_guidance_scale=cfg.max_guidance_scale, image_init_sigma=pipe.default_image_init_sigma(),
                    keep_first_frame=cfg.keep_first_frame, render=cfg.render, height=cfg.height, width=cfg.width,
                    generator=torch.Generator().manual_seed(SEED), output_type="np")
    out = pipe(load_image(EXAMPLE), **{**settings, **overrides})
    return to_uint8(out.frames[0])


def wait_for_video(driver):
    wait_for(lambda: driver.execute_script("const v = document.getElementById('video');"
                                           "return v.src !== '' && v.readyState >= 2;") or error_text(driver),
             "the video element to load")
    assert error_text(driver) == ""


def assert_frames_download(driver, expected: np.ndarray):
    """The page's lossless download (PNG frames) against uint8 frames of a direct pipeline call."""
    link = driver.find_element("id", "download_frames").get_attribute("href")
    archive = zipfile.ZipFile(io.BytesIO(fetch(link)))
    pngs = np.stack([np.asarray(Image.open(archive.open(name))) for name in sorted(archive.namelist())])
    assert pngs.shape == expected.shape
    assert np.abs(pngs.astype(int) - expected).max() <= 1  # rounding of the same float frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


# Frames the browser shows: seek to the middle of frame i and draw the video onto a canvas.
GRAB_FRAMES = """
const [count, fps, done] = arguments;
const video = document.getElementById("video");
video.pause();
const canvas = document.createElement("canvas");
canvas.width = video.videoWidth; canvas.height = video.videoHeight;
const context = canvas.getContext("2d", {willReadFrequently: true});
const frames = [];
// Seeked can fire before the new frame is presented (seen once on a loaded CI host: the last frame
// drawn was an earlier one): wait for the frame callback too, or a second where it never comes.
const seekTo = (time) => new Promise((resolve) => {
  let seeked = false, shown = !video.requestVideoFrameCallback;
  const finish = () => { if (seeked && shown) resolve(); };
  if (!shown) video.requestVideoFrameCallback(() => { shown = true; finish(); });
  setTimeout(() => { shown = true; finish(); }, 1000);
  video.addEventListener("seeked", () => { seeked = true; finish(); }, {once: true});
  video.currentTime = time;
});
(async () => {
  for (let i = 0; i < count; i++) {
    await seekTo((i + 0.5) / fps);
    context.drawImage(video, 0, 0);
    frames.push(Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data));
  }
  done({width: canvas.width, height: canvas.height, frames: frames});
})().catch((err) => done({error: String(err)}));
"""


def test_generate_in_chromium(server, browser, tmp_path):
    frames = server.engine.defaults().frames
    open_page(browser, server)
    fill(browser, seed=SEED, steps=STEPS)
    generate(browser, EXAMPLE)
    wait_for_video(browser)
    browser.save_screenshot(str(tmp_path / "demo.png"))
    assert Image.open(tmp_path / "demo.png").size[0] > 0

    assert browser.find_element("id", "progress").get_attribute("value") == "1"
    timings = browser.find_element("id", "timings").text
    assert f"denoise ({STEPS} steps" in timings and "decode" in timings and "total" in timings

    expected = reference_frames(frames)
    # lossless: the frames download holds exactly the pipeline's frames for this seed
    assert_frames_download(browser, expected)

    # the mp4 behind the download link, decoded by ffmpeg: H.264 4:2:0 at 64x64 measured 41 dB
    from svd_fast.video_io import read_video

    video_path = tmp_path / "download.mp4"
    video_path.write_bytes(fetch(browser.find_element("id", "download").get_attribute("href")))
    decoded, fps = read_video(video_path)
    assert decoded.shape == expected.shape and fps == server.engine.defaults().fps
    assert psnr(decoded, expected) > 35, psnr(decoded, expected)

    # what Chromium itself shows, frame by frame: its own H.264 decoder and colour conversion
    shown = browser.execute_async_script(GRAB_FRAMES, frames, fps)
    assert "error" not in shown, shown
    pixels = np.asarray(shown["frames"], dtype=np.uint8).reshape(frames, shown["height"], shown["width"], 4)[..., :3]
    assert pixels.shape == expected.shape
    for i in range(frames):  # measured 42-44 dB to its own frame, at most 30 dB to a neighbour: the order is right
        scores = [psnr(pixels[i], ref) for ref in expected]
        assert scores[i] > 35 and scores[i] == max(scores), (i, scores)


def test_long_video_in_chromium(server, browser, tmp_path):
    """More frames than the window: the page shows the video and the chunked sampling's timings."""
    frames = server.engine.defaults().frames + 5
    open_page(browser, server)
    fill(browser, seed=SEED, steps=2, frames=frames)
    generate(browser, EXAMPLE)
    wait_for_video(browser)
    browser.save_screenshot(str(tmp_path / "long.png"))
    timings = browser.find_element("id", "timings").text
    assert "sample (2 chunks" in timings and "total" in timings and "NaN" not in timings, timings
    assert browser.execute_script("return document.getElementById('video').duration") > 0


def test_bundled_lora_from_the_select(server, browser, tmp_path, monkeypatch):
    from selenium.webdriver.support.ui import Select

    from svd_fast.app import engine
    from test_comfyui_nodes import make_lora_file

    monkeypatch.setattr(engine, "ASSETS", tmp_path)  # the bundled adapters are listed from here
    pipe = reference_pipe()
    path = make_lora_file(pipe.unet, tmp_path / "loras" / "camera_lora.safetensors")
    open_page(browser, server)
    Select(browser.find_element("id", "lora")).select_by_value("loras/camera_lora.safetensors")
    # an adapter's motion is set at high noise: choosing one switches the start to pure noise
    assert browser.find_element("id", "image_init_sigma").get_attribute("value") == "0"
    fill(browser, seed=SEED, steps=STEPS, lora_scale=0.8)
    generate(browser, EXAMPLE)
    wait_for_video(browser)
    browser.save_screenshot(str(tmp_path / "lora.png"))
    pipe.load_lora_weights(str(path), adapter_name="camera", scale=0.8)
    expected = reference_frames(server.engine.defaults().frames, pipe, image_init_sigma=None)
    assert_frames_download(browser, expected)
    pipe.unload_lora_weights()
    plain = reference_frames(server.engine.defaults().frames, pipe, image_init_sigma=None)
    assert np.abs(plain.astype(int) - expected).max() > 2
    Select(browser.find_element("id", "lora")).select_by_value("")
    assert float(browser.find_element("id", "image_init_sigma").get_attribute("value")) == (pipe.default_image_init_sigma() or 0)


def test_camera_move_from_the_select(server, browser, tmp_path):
    """The page's camera select reaches the pipeline: the frames are pipe(camera='zoom_in')'s."""
    from selenium.webdriver.support.ui import Select

    open_page(browser, server)
    Select(browser.find_element("id", "camera")).select_by_value("zoom_in")
    fill(browser, seed=SEED, steps=STEPS)
    generate(browser, EXAMPLE)
    wait_for_video(browser)
    frames = server.engine.defaults().frames
    expected = reference_frames(frames, camera="zoom_in")
    assert_frames_download(browser, expected)
    assert np.abs(expected.astype(int) - reference_frames(frames)).max() > 10  # the move made a difference


def test_camera_moves_are_checked_and_carry_on_in_long_videos(server):
    """A bad camera request is refused when it comes in; with more frames than the window the move
    goes on over the chunks as the sample CLI's long video does (svd_fast.long_video)."""
    status, answer = post_job(server, EXAMPLE.read_bytes(), camera="dolly")
    assert status == 400 and "camera move must be one of" in answer["error"]
    cfg = server.engine.pipe.config
    frames = cfg.num_frames + 3
    status, job = post_job(server, EXAMPLE.read_bytes(), camera="zoom_in", frames=frames, steps=2, seed=SEED)
    assert status == 202
    wait_for(lambda: job_status(server, job["id"])["state"] in ("done", "error"), "the job")
    done = job_status(server, job["id"])
    assert done["state"] == "done" and done["timings"]["chunks"] == 2, done
    assert np.abs(downloaded_frames(server, done).astype(int) - long_reference(frames, camera=["zoom_in"])).max() <= 1


@pytest.mark.parametrize("case", ["not_an_image", "huge_image", "zero_frames", "guidance_out_of_range",
                                  "no_image", "missing_lora", "invalid_lora"])
def test_bad_input_shows_one_line_and_server_goes_on(server, browser, tmp_path, case):
    image = EXAMPLE
    expected = {
        "not_an_image": "cannot read image notes.png",
        "huge_image": "image too large: huge.png",
        "zero_frames": "frames must be between 1 and 256, got 0",
        "guidance_out_of_range": "max guidance must be between 0.0 and 30.0, got 1000.0",
        "no_image": "no image: choose an image file first",
        "missing_lora": "LoRA adapter not found",
        "invalid_lora": "bad_lora.safetensors",  # refused by the worker while loading it
    }[case]
    open_page(browser, server)
    if case == "not_an_image":
        image = tmp_path / "notes.png"
        image.write_text("this is text, not a picture")
    elif case == "huge_image":
        image = tmp_path / "huge.png"
        _huge_png_header(image)
    elif case == "zero_frames":
        fill(browser, frames=0)
    elif case == "guidance_out_of_range":
        fill(browser, max_guidance=1000)
    elif case == "missing_lora":
        fill(browser, lora_path=str(tmp_path / "nothing_lora.safetensors"))
    elif case == "invalid_lora":
        from safetensors.torch import save_file

        save_file({"not.a.lora.key": torch.zeros(2)}, str(tmp_path / "bad_lora.safetensors"))
        fill(browser, lora_path=str(tmp_path / "bad_lora.safetensors"), steps=2)
    if case == "no_image":
        browser.find_element("id", "generate").click()
    else:
        generate(browser, image)
    message = wait_for(lambda: error_text(browser), "the error line", 60)
    browser.save_screenshot(str(tmp_path / "error.png"))
    assert message.startswith("Error: ") and expected in message and "\n" not in message
    assert browser.find_element("id", "generate").is_enabled()
    assert json.loads(fetch(server.url + "api/config"))["model"] == str(DEFAULT_MODEL)  # still serving
    if case == "invalid_lora":  # a job failing in the worker leaves the next one working
        browser.find_element("id", "lora_path").clear()
        browser.find_element("id", "generate").click()
        wait_for_video(browser)


def post_job(server, body: bytes, **params) -> tuple[int, dict]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    request = urllib.request.Request(f"{server.url}api/jobs?{query}", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def job_status(server, job_id: str) -> dict:
    return json.loads(fetch(f"{server.url}api/jobs/{job_id}"))


def test_one_job_at_a_time_while_serving(server):
    image = EXAMPLE.read_bytes()
    status, first = post_job(server, image, steps=40, seed=1)
    assert status == 202
    status, second = post_job(server, image, steps=2, seed=2)
    assert status == 202
    wait_for(lambda: job_status(server, first["id"])["state"] == "running", "the first job to start", 60)
    start = time.monotonic()
    page = fetch(server.url)
    assert b"<title>svd_fast" in page and time.monotonic() - start < 5  # answered during the job
    queued = job_status(server, second["id"])
    assert queued["state"] == "queued" and queued["ahead"] == 1
    wait_for(lambda: job_status(server, second["id"])["state"] == "done", "both jobs")
    assert job_status(server, first["id"])["state"] == "done"


def test_start_noise_and_first_frame_hold_come_from_the_request(server):
    """The page offers the model's start, hold and render defaults (the default model: the warp
    render, whose start is pure noise); a request that turns them off gets the pipeline's
    pure-noise frames."""
    defaults = json.loads(fetch(server.url + "api/config"))["defaults"]
    pipe = server.engine.pipe
    assert (defaults["image_init_sigma"], defaults["keep_first_frame"], defaults["warp_render"]) == (
        pipe.default_image_init_sigma() or 0.0, int(pipe.config.keep_first_frame), int(pipe.config.render == "warp"))
    assert defaults["warp_render"] == 1  # the default model renders from the input
    status, job = post_job(server, EXAMPLE.read_bytes(), steps=STEPS, seed=SEED, image_init_sigma=0, keep_first_frame=0,
                           warp_render=0)
    assert status == 202
    wait_for(lambda: job_status(server, job["id"])["state"] == "done", "the job")
    archive = zipfile.ZipFile(io.BytesIO(fetch(server.url + job_status(server, job["id"])["frames"].lstrip("/"))))
    pngs = np.stack([np.asarray(Image.open(archive.open(name))) for name in sorted(archive.namelist())])
    plain = reference_frames(len(pngs), image_init_sigma=None, keep_first_frame=False, render="frames")
    assert np.abs(pngs.astype(int) - plain).max() <= 1
    assert np.abs(plain.astype(int) - reference_frames(len(pngs))).max() > 10  # the defaults differ from it
    for name in ("keep_first_frame", "warp_render"):
        status, answer = post_job(server, EXAMPLE.read_bytes(), **{name: 2})
        assert status == 400 and f"{name.replace('_', ' ')} must be between 0 and 1, got 2" in answer["error"]


def test_more_frames_than_the_window_make_the_clis_long_video(server):
    """A request for more frames than the model makes at once gets svd_fast.long_video's anchored
    chunks, as `python -m svd_fast.sample --frames N` does, not one oversized window."""
    cfg = server.engine.pipe.config
    frames = cfg.num_frames + 5  # two chunks with overlap 1
    status, job = post_job(server, EXAMPLE.read_bytes(), frames=frames, steps=2, seed=SEED)
    assert status == 202
    wait_for(lambda: job_status(server, job["id"])["state"] == "done", "the long job")
    done = job_status(server, job["id"])
    assert done["timings"]["chunks"] == 2 and done["timings"]["per_step"] == []
    pngs = downloaded_frames(server, done)
    assert pngs.shape == (frames, cfg.height, cfg.width, 3)
    assert np.abs(pngs.astype(int) - long_reference(frames)).max() <= 1


def downloaded_frames(server, done: dict) -> np.ndarray:
    """uint8 (T, H, W, 3) from a finished job's lossless frames download."""
    archive = zipfile.ZipFile(io.BytesIO(fetch(server.url + done["frames"].lstrip("/"))))
    return np.stack([np.asarray(Image.open(archive.open(name))) for name in sorted(archive.namelist())])


def long_reference(frames: int, **extra) -> np.ndarray:
    """uint8 frames of svd_fast.long_video for the example image with the page's defaults and 2 steps."""
    from svd_fast.long_video import sample_long_video
    from svd_fast.video_io import load_image, to_uint8

    pipe = reference_pipe()
    cfg = pipe.config
    video = sample_long_video(pipe, load_image(EXAMPLE), frames, window=cfg.num_frames, height=cfg.height,
                              width=cfg.width, num_inference_steps=2, generator=torch.Generator().manual_seed(SEED),
                              fps=cfg.fps, motion_bucket_id=cfg.motion_bucket_id, min_guidance_scale=1.0,
                              max_guidance_scale=cfg.max_guidance_scale, noise_aug_strength=0.02,
                              image_init_sigma=cfg.image_init_sigma, keep_first_frame=cfg.keep_first_frame, **extra)
    return to_uint8(video)


def test_upload_limit_refused_before_reading(server):
    import http.client

    from svd_fast.app.server import MAX_UPLOAD

    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.putrequest("POST", "/api/jobs")
    connection.putheader("Content-Length", str(MAX_UPLOAD + 1))
    connection.endheaders()  # the body never comes: the answer must not wait for it
    response = connection.getresponse()
    assert response.status == 413 and "image file too large" in json.loads(response.read())["error"]
    connection.close()
    assert b"<title>svd_fast" in fetch(server.url)


def test_int8_with_a_lora_fuses_it_and_the_next_request_gets_clean_weights(tmp_path):
    """int8 holds one weight per layer, so the engine fuses the adapter first; a later request
    without int8 or adapters must find the model's own weights again (fuse, then unfuse)."""
    from svd_fast.adapters import adapted_layers, plain_unet
    from svd_fast.app.engine import Lora, Speed
    from test_comfyui_nodes import make_lora_file

    engine = Engine(dtype="fp32")
    original = {k: v.clone() for k, v in engine.pipe.unet.state_dict().items()}
    lora = Lora(str(make_lora_file(engine.pipe.unet, tmp_path / "camera_lora.safetensors")), 0.8).checked()
    engine._configure(Speed("int8"), (lora,))
    engine._configure(Speed("exact"), ())
    unet = plain_unet(engine.pipe)
    assert not adapted_layers(unet)
    for name, value in unet.state_dict().items():  # fp32 W + d - d: one rounding of d's size at most
        torch.testing.assert_close(value, original[name], atol=1e-6, rtol=0, msg=name)


def test_int8_refuses_unfused_adapters(tmp_path):
    from svd_fast.accel import accelerate
    from test_comfyui_nodes import make_lora_file

    pipe = reference_pipe()
    pipe.load_lora_weights(str(make_lora_file(pipe.unet, tmp_path / "camera_lora.safetensors")))
    with pytest.raises(ValueError, match="fuse_lora"):
        accelerate(pipe, quantize="int8")
