"""Text-to-video (SVDConfig.conditioning == "text"): SVDTextToVideoPipeline, both checkpoint layouts,
the CLI, and the shipped default text-to-video model's attribute-match figure."""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from svd_fast.checkpoints import CheckpointError
from svd_fast.checkpoints.io import open_tensors
from svd_fast.checkpoints.text_encoder import HF_PREFIX, OPEN_CLIP_PREFIX, canonical
from svd_fast.config import SVDConfig, VAEConfig
from svd_fast.text_to_video import SVDTextToVideoPipeline
from svd_fast.train.text_to_video import build_tokenizer, caption_attributes, clip_attributes, text_tower_config

REPO = Path(__file__).resolve().parents[1]
DEFAULT_T2V = REPO / "svd_fast" / "assets" / "default_t2v"
CAPTIONS = ["a bright scene, mostly red (60%) and blue (20%); camera pans left at 0.30 frame widths/s",
            "a dim scene, mostly green (70%); static camera; nothing moves on its own",
            "an evenly lit scene, mostly yellow (50%); camera zooms in at 0.20 scale/s"]
H = W = 32
FRAMES = 3
# fp32 everywhere: the pipeline and the hand-written reference run the same ops in another order
ATOL = 1e-5


def tiny_text_model(seed: int = 0, widths: tuple[int, ...] = (32, 64)) -> SVDTextToVideoPipeline:
    from transformers import CLIPTextModelWithProjection

    tokenizer = build_tokenizer(CAPTIONS, max_length=24)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(text_tower_config(tokenizer, hidden_size=32, projection_dim=16)).eval()
    tiny = SVDConfig.from_name("tiny")
    vae = VAEConfig(block_out_channels=(32, 32), layers_per_block=1, latent_channels=4)  # 2x: 16x16 latents at 32 px
    unet = dataclasses.replace(tiny.unet, in_channels=vae.latent_channels, cross_attention_dim=32, num_frames=FRAMES,
                               block_out_channels=widths, num_attention_heads=tuple(max(w // 64, 1) for w in widths))
    config = dataclasses.replace(tiny, unet=unet, vae=vae, conditioning="text", num_frames=FRAMES, height=H, width=W,
                                 num_inference_steps=2, max_guidance_scale=2.5)
    pipe = SVDTextToVideoPipeline.from_config(config, tokenizer, text_encoder, seed=seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_text_model()


def run(pipe, prompt="a bright scene, mostly red", seed=0, **kw):
    kw = {"output_type": "np", **kw}
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **kw).frames


# ---------------------------------------------------------------------------------------- pipeline
def test_shapes_and_diffusers_arguments(pipe):
    frames = run(pipe, ["a bright scene, mostly red", "a dim scene, mostly green"], num_videos_per_prompt=2)
    assert frames.shape == (4, FRAMES, H, W, 3)  # prompts x videos per prompt, model defaults for size and frames
    assert frames.min() >= 0 and frames.max() <= 1
    pt = run(pipe, output_type="pt", num_frames=2, height=16, width=24)
    assert pt.shape == (1, 2, 3, 16, 24)
    pil = run(pipe, output_type="pil")
    assert len(pil) == 1 and len(pil[0]) == FRAMES and pil[0][0].size == (W, H)
    latents = run(pipe, output_type="latent")
    assert latents.shape == (1, FRAMES, 4, H // 2, W // 2)


def test_generator_reproducibility(pipe):
    a, b, c = run(pipe, seed=1), run(pipe, seed=1), run(pipe, seed=2)
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    # one generator per video, as in diffusers: video k of a batch is the single video of generator k
    batch = pipe(["a bright scene, mostly red"] * 2, generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)],
                 output_type="latent").frames
    single = pipe("a bright scene, mostly red", generator=torch.Generator().manual_seed(6), output_type="latent").frames
    # batch 2 vs batch 1 reorders the float sums of every layer: ~1e-4 after the steps, versus O(1) between seeds
    torch.testing.assert_close(batch[1:], single, atol=1e-3, rtol=0)
    assert (batch[0] - single[0]).abs().max() > 0.1


def test_prompt_changes_the_video_and_negative_prompt_is_used(pipe):
    red, green = run(pipe, "mostly red"), run(pipe, "mostly green")
    assert np.abs(red - green).max() > 1e-4
    plain = run(pipe, "mostly red", negative_prompt="mostly blue")
    assert np.abs(plain - red).max() > 1e-4
    assert np.array_equal(run(pipe, "mostly red", negative_prompt=""), red)  # the default is the empty prompt


def _encode(pipe, prompts):
    """Token states straight from transformers: padded to the tokenizer's length, last_hidden_state."""
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(input_ids=ids).last_hidden_state


@pytest.mark.parametrize("negative", [None, "mostly blue; static camera"])
def test_guidance_is_the_hand_computed_combination(pipe, negative):
    """One Euler step from sigma s to 0 returns D itself: compare with c_skip x + c_out (v_u + g (v_c - v_u))
    computed from the UNet called directly on the prompt's and the unconditional prompt's token states."""
    prompt, scale, s = "mostly red; camera pans left", 3.0, 2.0
    noise = torch.randn(1, FRAMES, 4, H // 2, W // 2, generator=torch.Generator().manual_seed(0))
    out = pipe(prompt, negative_prompt=negative, guidance_scale=scale, sigmas=[s, 0.0], latents=noise,
               output_type="latent").frames
    with torch.no_grad():
        x = noise * (s**2 + 1) ** 0.5  # the initial noise scale sqrt(sigma_max^2 + 1)
        c_in, c_skip, c_out, c_noise = (s**2 + 1) ** -0.5, 1 / (s**2 + 1), -s / (s**2 + 1) ** 0.5, 0.25 * np.log(s)
        ids = torch.tensor([[pipe.config.fps - 1, pipe.config.motion_bucket_id, 0.0]])
        timestep = torch.tensor([c_noise], dtype=torch.float32)
        v_c = pipe.unet(x * c_in, timestep, _encode(pipe, [prompt]), ids)
        v_u = pipe.unet(x * c_in, timestep, _encode(pipe, [negative or ""]), ids)
        expected = c_skip * x + c_out * (v_u + scale * (v_c - v_u))
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=1e-5)
    unguided = pipe(prompt, guidance_scale=1.0, sigmas=[s, 0.0], latents=noise, output_type="latent").frames
    torch.testing.assert_close(unguided, c_skip * x + c_out * v_c, atol=ATOL, rtol=1e-5)


def test_bad_arguments(pipe):
    with pytest.raises(ValueError, match="prompt must be a string"):
        pipe([])
    with pytest.raises(ValueError, match="negative prompts"):
        pipe(["a", "b", "c"], negative_prompt=["x", "y"])
    with pytest.raises(TypeError, match="image_embeddings"):
        pipe("a", image_embeddings=torch.zeros(1, 1, 32))


# ------------------------------------------------------------------------------------- lead prompt
def test_dominant_colour_lead_of_a_captioner_caption():
    """The captioner's own caption of a frame the test paints 75% red and 25% blue names both; the lead
    keeps the red alone. Prompts naming one colour, or not in the captioner's words, are unchanged."""
    from svd_fast.curate.captions import TrivialCaptioner
    from svd_fast.text_to_video import dominant_colour_lead

    frame = np.zeros((48, 48, 3), np.uint8)  # the captioner's own colour grid: no pixel blends the two
    frame[:, :36] = (220, 30, 30)
    frame[:, 36:] = (30, 30, 220)
    caption = TrivialCaptioner().caption_image(frame)
    assert caption.endswith("mostly red (75%) and blue (25%)"), caption
    assert dominant_colour_lead(caption) == caption.replace("mostly red (75%) and blue (25%)", "mostly red (75%)")
    assert dominant_colour_lead(CAPTIONS[0]) == ("a bright scene, mostly red (60%); camera pans left at 0.30 frame "
                                                 "widths/s")
    for prompt in (CAPTIONS[1], "a red and blue scene", "mostly red and blue"):
        assert dominant_colour_lead(prompt) == prompt


def _recorded_contexts(pipe, monkeypatch, **kw):
    """(sigma, context of the conditional half) of every UNet call while sampling CAPTIONS[0]."""
    calls, forward = [], pipe.unet.forward

    def record(sample, timestep, encoder_hidden_states, *args, **kwargs):
        sigma = float(torch.exp(4 * torch.as_tensor(timestep).reshape(-1)[0]))  # c_noise = ln(sigma) / 4
        calls.append((sigma, encoder_hidden_states[-1].clone(), encoder_hidden_states[0].clone()))
        return forward(sample, timestep, encoder_hidden_states, *args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", record)
    pipe(CAPTIONS[0], sigmas=[10.0, 3.0, 1.0, 0.3, 0.0], output_type="latent", **kw)
    monkeypatch.undo()
    return calls


def test_lead_prompt_conditions_the_steps_above_lead_sigma(pipe, monkeypatch):
    """Every step above lead_sigma sees the lead prompt's token states, every step at or below it the
    prompt's, and the unconditional half stays the empty prompt's throughout."""
    from svd_fast.text_to_video import dominant_colour_lead

    with torch.no_grad():
        prompt, lead, empty = _encode(pipe, [CAPTIONS[0], dominant_colour_lead(CAPTIONS[0]), ""])
    assert (prompt - lead).abs().max() > 1e-3
    calls = _recorded_contexts(pipe, monkeypatch, lead_sigma=3.0)  # lead_prompt="auto": the dominant colour alone
    assert [round(s, 3) for s, _, _ in calls] == [10.0, 3.0, 1.0, 0.3]
    for sigma, cond, uncond in calls:
        torch.testing.assert_close(cond, lead if sigma > 3.0 else prompt, atol=ATOL, rtol=0)
        torch.testing.assert_close(uncond, empty, atol=ATOL, rtol=0)
    given = _recorded_contexts(pipe, monkeypatch, lead_prompt="mostly blue (20%)", lead_sigma=0.5)
    with torch.no_grad():
        blue = _encode(pipe, ["mostly blue (20%)"])[0]
    for sigma, cond, _ in given:
        torch.testing.assert_close(cond, blue if sigma > 0.5 else prompt, atol=ATOL, rtol=0)
    for sigma, cond, _ in _recorded_contexts(pipe, monkeypatch, lead_prompt=None, lead_sigma=3.0):
        torch.testing.assert_close(cond, prompt, atol=ATOL, rtol=0)


def test_lead_prompt_at_the_ends_of_the_noise_range(pipe):
    """A lead_sigma above every step's sigma samples the prompt itself; one below every step samples
    the lead prompt as if it were the prompt (same noise: camera words and seed)."""
    from svd_fast.text_to_video import dominant_colour_lead

    plain = run(pipe, CAPTIONS[0], seed=4, lead_prompt=None)
    assert np.array_equal(run(pipe, CAPTIONS[0], seed=4, lead_sigma=1e6), plain)
    assert np.array_equal(run(pipe, CAPTIONS[0], seed=4), plain)  # this model has no lead_sigma: "auto" is off
    lead_only = run(pipe, dominant_colour_lead(CAPTIONS[0]), seed=4, lead_prompt=None)
    np.testing.assert_allclose(run(pipe, CAPTIONS[0], seed=4, lead_sigma=0.0), lead_only, atol=1e-6)
    assert np.abs(lead_only - plain).max() > 1e-3


@pytest.mark.parametrize("kwargs, match", [
    ({"lead_prompt": "mostly red"}, "needs lead_sigma"),
    ({"lead_sigma": -1.0}, "finite sigma"),
    ({"lead_sigma": float("nan")}, "finite sigma"),
    ({"lead_prompt": ["a", "b"], "lead_sigma": 1.0}, "2 lead prompts for 1 prompts"),
    ({"lead_prompt": 3, "lead_sigma": 1.0}, "lead_prompt must be a string"),
])
def test_bad_lead_arguments(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe("mostly red", **kwargs)


def test_lead_sigma_is_a_saved_text_model_default(pipe, tmp_path):
    """A model's lead_sigma travels with it in both layouts and makes "auto" sample what an explicit
    lead_sigma does on the model without it; image models cannot have one."""
    config = dataclasses.replace(pipe.config, lead_sigma=2.0)
    led = SVDTextToVideoPipeline(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, config)
    led.save_pretrained(tmp_path / "folder")
    led.save_pretrained(tmp_path / "t2v.safetensors", layout="sgm")
    assert json.loads((tmp_path / "folder" / "svd_fast_sampling.json").read_text())["lead_sigma"] == 2.0
    want = run(pipe, CAPTIONS[0], seed=2, lead_sigma=2.0)
    assert np.abs(want - run(pipe, CAPTIONS[0], seed=2)).max() > 1e-3
    for path in (tmp_path / "folder", tmp_path / "t2v.safetensors"):
        loaded = SVDTextToVideoPipeline.from_pretrained(path, tokenizer=pipe.tokenizer)
        loaded.set_progress_bar_config(disable=True)
        assert loaded.config.lead_sigma == 2.0
        np.testing.assert_allclose(run(loaded, CAPTIONS[0], seed=2), want, atol=1e-6)
    with pytest.raises(ValueError, match="lead_sigma is a text model's"):
        SVDConfig(lead_sigma=1.0)


# ------------------------------------------------------------------------------------ camera words
NOISE_SHAPE = (FRAMES, 4, H // 2, W // 2)


def _latents(pipe, prompt, **kw):
    return pipe(prompt, output_type="latent", **kw).frames


@pytest.mark.parametrize("prompt, move", [("mostly red; camera pans left", "pan_left"),
                                          ("mostly red; Camera zooms in at 0.20 scale/s", "zoom_in"),
                                          ("mostly red; camera tilts down", "pan_down")])
def test_camera_words_start_from_noise_moving_that_way(pipe, prompt, move):
    """The default camera="prompt": the video starts from warped_noise of the move the words name, drawn
    from the generator; the same as sampling that noise given as latents."""
    from svd_fast.camera_start import parse_move, warped_noise

    got = _latents(pipe, prompt, generator=torch.Generator().manual_seed(4))
    noise = warped_noise(parse_move(move), *NOISE_SHAPE, generator=torch.Generator().manual_seed(4))[None]
    torch.testing.assert_close(got, _latents(pipe, prompt, latents=noise), atol=0, rtol=0)
    plain = torch.randn((1, *NOISE_SHAPE), generator=torch.Generator().manual_seed(4))
    words_only = _latents(pipe, prompt, generator=torch.Generator().manual_seed(4), camera=None)
    torch.testing.assert_close(words_only, _latents(pipe, prompt, latents=plain), atol=0, rtol=0)
    assert (got - words_only).abs().max() > 1e-3


def test_camera_per_prompt_and_video(pipe):
    """A batch mixes moves: each video draws its own noise from its own generator, plain where the
    prompt names no move; an explicit camera applies to every prompt."""
    from svd_fast.camera_start import parse_move, warped_noise

    prompts = ["mostly red; camera pans left", "mostly green; static camera"]
    seeds = (1, 2, 3, 4)
    got = _latents(pipe, prompts, num_videos_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in seeds])
    g = [torch.Generator().manual_seed(s) for s in seeds]
    left = parse_move("pan_left")
    noise = torch.stack([warped_noise(left, *NOISE_SHAPE, generator=g[0]), warped_noise(left, *NOISE_SHAPE, generator=g[1]),
                         torch.randn(NOISE_SHAPE, generator=g[2]), torch.randn(NOISE_SHAPE, generator=g[3])])
    torch.testing.assert_close(got, _latents(pipe, prompts, num_videos_per_prompt=2, latents=noise), atol=0, rtol=0)
    # one generator for the batch: drawn video after video
    got = _latents(pipe, prompts, generator=torch.Generator().manual_seed(7), camera="zoom_out:1.1")
    g = torch.Generator().manual_seed(7)
    out = parse_move("zoom_out:1.1")
    noise = torch.stack([warped_noise(out, *NOISE_SHAPE, generator=g), warped_noise(out, *NOISE_SHAPE, generator=g)])
    torch.testing.assert_close(got, _latents(pipe, prompts, latents=noise), atol=0, rtol=0)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(camera="pan_left", latents=torch.zeros(1, *NOISE_SHAPE)), ValueError, "give latents with camera=None"),
    (dict(camera="spin"), ValueError, "camera move must be one of"),
    (dict(camera_from="image"), TypeError, "camera_from"),
])
def test_bad_camera_arguments(pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        pipe("mostly red", generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs)


def test_cross_attention_sees_every_token(pipe):
    """The context is the whole token sequence: a change in the last word changes the output."""
    ctx = _encode(pipe, ["mostly red; camera pans left", "mostly red; camera pans right"])
    assert ctx.shape == (2, pipe.tokenizer.model_max_length, 32)
    x = torch.randn(2, FRAMES, 4, 8, 8)
    ids = torch.zeros(2, 3)
    with torch.no_grad():
        v = pipe.unet(x[:1].repeat(2, 1, 1, 1, 1), torch.zeros(2), ctx, ids)
    assert (v[0] - v[1]).abs().max() > 1e-5


# ------------------------------------------------------------------------------------- checkpoints
def _latent(pipe, prompt="mostly red; camera pans left"):
    return pipe(prompt, generator=torch.Generator().manual_seed(3), output_type="latent").frames


def test_diffusers_folder_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "m")
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert "text_encoder" in names and "tokenizer" in names and "image_encoder" not in names
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_class_name"] == "SVDTextToVideoPipeline"
    assert json.loads((tmp_path / "m" / "svd_fast_sampling.json").read_text())["conditioning"] == "text"
    assert list((tmp_path / "m" / "text_encoder").glob("*.safetensors"))
    loaded = SVDTextToVideoPipeline.from_pretrained(tmp_path / "m")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config == pipe.config
    torch.testing.assert_close(_latent(loaded), _latent(pipe), atol=0, rtol=0)


def test_sgm_file_round_trip_in_open_clip_names(pipe, tmp_path):
    path = tmp_path / "t2v.safetensors"
    pipe.save_pretrained(path, layout="sgm")
    source = open_tensors(path)
    keys = set(source.keys())
    assert not any(k.startswith("conditioner.embedders.0.open_clip") for k in keys)  # no image tower
    # FrozenOpenCLIPEmbedder names, checked against the transformers tensors they come from
    state = pipe.text_encoder.state_dict()
    q, k, v = (state[f"text_model.encoder.layers.1.self_attn.{n}_proj.weight"] for n in "qkv")
    torch.testing.assert_close(source.read(OPEN_CLIP_PREFIX + "transformer.resblocks.1.attn.in_proj_weight"),
                               torch.cat([q, k, v]), atol=0, rtol=0)
    torch.testing.assert_close(source.read(OPEN_CLIP_PREFIX + "text_projection"), state["text_projection.weight"].T,
                               atol=0, rtol=0)
    torch.testing.assert_close(source.read(OPEN_CLIP_PREFIX + "token_embedding.weight"),
                               state["text_model.embeddings.token_embedding.weight"], atol=0, rtol=0)
    assert OPEN_CLIP_PREFIX + "ln_final.weight" in keys and OPEN_CLIP_PREFIX + "positional_embedding" in keys
    loaded = SVDTextToVideoPipeline.from_pretrained(path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config == pipe.config
    torch.testing.assert_close(_latent(loaded), _latent(pipe), atol=0, rtol=0)


def test_sgm_file_from_elsewhere_needs_a_tokenizer(tmp_path):
    """A file without our metadata, its tower in FrozenCLIPEmbedder names (a transformers CLIPTextModel
    stored whole): the config is inferred from shapes (64-channel UNet heads, as for released files)
    and the tokenizer comes from the caller."""
    from safetensors.torch import save_file

    pipe = tiny_text_model(widths=(64, 64))

    path = tmp_path / "t2v.safetensors"
    pipe.save_pretrained(path, layout="sgm")
    source = open_tensors(path)
    tensors = {k: source.read(k) for k in source.keys() if not k.startswith(OPEN_CLIP_PREFIX)}
    tower = pipe.text_encoder.state_dict()
    tensors.update({HF_PREFIX + k: v.contiguous() for k, v in tower.items()  # sgm: transformer.text_model.*
                    if k.startswith("text_model.") and not k.endswith("position_ids")})
    foreign = tmp_path / "foreign.safetensors"
    save_file(tensors, foreign)  # no metadata at all
    with pytest.raises(CheckpointError, match="tokenizer"):
        SVDTextToVideoPipeline.from_pretrained(foreign)
    tokenizer_dir = tmp_path / "tok"
    pipe.tokenizer.save_pretrained(tokenizer_dir)
    loaded = SVDTextToVideoPipeline.from_pretrained(foreign, tokenizer=tokenizer_dir)
    assert loaded.config.conditioning == "text"
    assert loaded.config.unet == dataclasses.replace(pipe.config.unet, num_frames=14)  # frames: svd's, not stored
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.text_encoder).__name__ == "CLIPTextModel"
    # the inferred tower (transformers' default activation) differs from ours (exact GELU) only in the
    # activation: the weights are ours, name for name
    for key, value in loaded.text_encoder.state_dict().items():
        if not key.endswith("position_ids"):
            torch.testing.assert_close(value, tower[canonical(key)], atol=0, rtol=0)


def test_a_clip_bpe_tokenizer_and_text_model_folder_work(tmp_path):
    """A user's CLIP tokenizer (vocab.json + merges.txt, transformers' CLIPTokenizer) and CLIPTextModel."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {t: i for i, t in enumerate([*letters, *(c + "</w>" for c in letters), "re", "red</w>",
                                         "<|startoftext|>", "<|endoftext|>"])}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nr e\nre d</w>\n")
    tokenizer = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=16)
    assert tokenizer.convert_ids_to_tokens(tokenizer("red").input_ids) == ["<|startoftext|>", "red</w>", "<|endoftext|>"]
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                                eos_token_id=vocab["<|endoftext|>"], bos_token_id=vocab["<|startoftext|>"],
                                                pad_token_id=vocab["<|endoftext|>"])).eval()
    base = tiny_text_model()
    user = SVDTextToVideoPipeline(base.unet, base.vae, text_encoder, tokenizer, base.config)
    user.set_progress_bar_config(disable=True)
    user.save_pretrained(tmp_path / "m")
    assert any((tmp_path / "m" / "tokenizer").iterdir())
    loaded = SVDTextToVideoPipeline.from_pretrained(tmp_path / "m")
    assert type(loaded.text_encoder).__name__ == "CLIPTextModel"
    assert loaded.tokenizer("red").input_ids == tokenizer("red").input_ids
    torch.testing.assert_close(_latent(loaded, "red"), _latent(user, "red"), atol=0, rtol=0)


def test_image_model_is_refused(tmp_path):
    from svd_fast.pipeline import SVDPipeline

    SVDPipeline.from_config("tiny").save_pretrained(tmp_path / "i2v")
    with pytest.raises(ValueError, match="not a text-to-video"):
        SVDTextToVideoPipeline.from_pretrained(tmp_path / "i2v")


# ------------------------------------------------------------------------------------------ captions
def test_caption_attributes_read_what_the_captioner_measured():
    from svd_fast.curate.captions import TrivialCaptioner
    from svd_fast.train.procedural import ProceduralConfig, random_clip_spec, render_clip

    spec = random_clip_spec(3, ProceduralConfig(fps_choices=(8.0,)))
    spec.camera_velocity, spec.zoom_rate = np.array([0.04, 0.0]), 0.0  # camera centre moves right: a pan right
    frames = ((render_clip(spec, 8, 64, 64)[0].permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    caption = TrivialCaptioner().caption_video(frames, [t / 8 for t in range(8)])
    assert caption_attributes(caption) == clip_attributes(frames, 8.0)
    assert clip_attributes(frames, 8.0)["camera"] == "camera pans right"
    with pytest.raises(ValueError):
        caption_attributes("a cat")


# ------------------------------------------------------------------------------------------------ CLI
def _cli(capsys, *args):
    from svd_fast.sample import cli

    try:
        code = cli(list(args))
    except SystemExit as exc:  # argparse and resolve_model exit with their message
        code = exc.code if isinstance(exc.code, int) else 2
        if not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args, message", [
    (["--prompt", "  "], "--prompt is empty"),
    (["--prompt", "red", "--image", "assets/example.png"], "exactly one of --image"),
    ([], "exactly one of --image"),
    (["--prompt", "red", "--noise-aug", "0.1"], "image-to-video flag"),
    (["--prompt", "red", "--camera-from", "image"], "image-to-video flag"),
    (["--prompt", "red", "--camera", "none", "--camera", "pan_left"], "--camera none leaves the noise plain"),
    (["--prompt", "red", "--camera", "spin"], "camera move must be one of"),
    (["--image", "assets/example.png", "--camera", "none"], "camera move must be one of"),
    (["--image", "assets/example.png", "--guidance-scale", "2"], "go with --prompt"),
    (["--image", "assets/example.png", "--lead-prompt", "red"], "go with --prompt"),
    (["--prompt", "red", "--lead-sigma", "-1"], "--lead-sigma must be a finite sigma"),
    (["--prompt", "red", "--lead-sigma", "inf"], "--lead-sigma must be a finite sigma"),
    (["--prompt", "red", "--model", str(REPO / "svd_fast/assets/default_model")], "not a text-to-video"),
])
def test_cli_bad_input_is_one_line(capsys, tmp_path, args, message):
    code, _, err = _cli(capsys, *args, "--out", str(tmp_path / "o.gif"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "o.gif").exists()


@pytest.mark.parametrize("camera, want", [([], "prompt"), (["--camera", "none"], None),
                                          (["--camera", "zoom_in:1.1", "--camera", "pan_up"], ["zoom_in:1.1", "pan_up"])])
def test_cli_camera_is_the_pipelines_camera(pipe, tmp_path, camera, want):
    """--prompt samples the prompt's camera words by default, --camera's moves instead, --camera none plain noise:
    each what pipe(camera=...) samples."""
    from PIL import Image

    from svd_fast.sample import main

    pipe.save_pretrained(tmp_path / "m")
    prompt = "mostly red; camera pans left"
    assert main(["--model", str(tmp_path / "m"), "--prompt", prompt, "--out", str(tmp_path / "v.png"), "--dtype", "fp32",
                 "--seed", "5", *camera]) == 0
    video = np.stack([np.asarray(Image.open(p)) for p in sorted(tmp_path.glob("v_*.png"))]).astype(float)
    frames = run(pipe, prompt, seed=5, camera=want)[0]
    assert np.abs(video - (frames * 255).round()).max() <= 1
    other = run(pipe, prompt, seed=5, camera="pan_right" if want is not None else "prompt")[0]
    assert np.abs(video - (other * 255).round()).max() > 5  # the camera made a difference


@pytest.mark.parametrize("flags, want", [(["--lead-sigma", "2"], {"lead_sigma": 2.0}),
                                         (["--lead-prompt", "mostly blue (20%)", "--lead-sigma", "2"],
                                          {"lead_prompt": "mostly blue (20%)", "lead_sigma": 2.0}),
                                         (["--lead-prompt", "none", "--lead-sigma", "2"], {"lead_prompt": None})])
def test_cli_lead_is_the_pipelines_lead(pipe, tmp_path, flags, want):
    from PIL import Image

    from svd_fast.sample import main

    pipe.save_pretrained(tmp_path / "m")
    assert main(["--model", str(tmp_path / "m"), "--prompt", CAPTIONS[0], "--out", str(tmp_path / "v.png"), "--dtype",
                 "fp32", "--seed", "5", *flags]) == 0
    video = np.stack([np.asarray(Image.open(p)) for p in sorted(tmp_path.glob("v_*.png"))]).astype(float)
    assert np.abs(video - (run(pipe, CAPTIONS[0], seed=5, **want)[0] * 255).round()).max() <= 1
    other = run(pipe, CAPTIONS[0], seed=5, lead_sigma=2.0, lead_prompt="mostly green (70%)")[0]
    assert np.abs(video - (other * 255).round()).max() > 5  # the lead made a difference


def test_cli_prompt_uses_the_default_text_model(capsys, tmp_path):
    """The command as a user runs it (own process): no --model means the shipped text model."""
    from svd_fast.video_io import read_video

    out = tmp_path / "v.gif"
    result = subprocess.run([sys.executable, "-m", "svd_fast.sample", "--prompt", "a bright scene, mostly red; camera pans left",
                             "--steps", "3", "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "wrote 8 frames" in result.stdout
    frames = read_video(out)[0]
    assert frames.shape[:3] == (8, 64, 64)


# ------------------------------------------------------------------------------ the shipped model
BENCH_FILE = "t2v-attributes-default-t2v-xeon-2026-12-05.json"  # the card's evaluation, per clip
EVAL_PROMPTS = 12  # the first 12 of the card's 128 held-out prompts
MIN_RATE = {"colour": 0.75, "camera": 0.75}  # measured 0.83 / 1.00 on these 12 (0.90 / 0.98 on all 128), less one clip and more
MARGIN = 0.3  # above each control (measured on these 12: colour shuffled 0.17, unconditioned 0.08; camera 0.17, 0.08)


@functools.cache
def t2v_recipe():
    """training/recipes/text_to_video.py as a module (registered first: its dataclasses look it up)."""
    path = REPO / "training" / "recipes" / "text_to_video.py"
    spec = importlib.util.spec_from_file_location("text_to_video_recipe", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_default_model_follows_prompts():
    """The card's evaluation on the first EVAL_PROMPTS held-out prompts: the generated clips' colour and camera
    move, measured by the captioner's extractor, match the prompt far more often than the controls do; from
    plain noise (camera=None) the camera is at the unconditioned rate."""
    recipe = t2v_recipe()
    card = json.loads((REPO / "bench" / "results" / BENCH_FILE).read_text())
    prompts = recipe.held_out_prompts(EVAL_PROMPTS)
    assert [p["caption"] for p in prompts] == [c["caption"] for c in card["clips"][:EVAL_PROMPTS]]  # the card's prompts
    result = recipe.evaluate(DEFAULT_T2V, prompts, card["steps"], card["guidance_scale"], seed=0)
    # the clips are the card's first ones (same prompts, seeds and steps): their attributes agree with it
    same = np.mean([all(r["model"][k] == c["model"][k] for k in ("colour", "camera"))
                    for r, c in zip(result["clips"], card["clips"])])
    assert same >= 0.9, same
    model, shuffled, unconditioned = result["model"], result["shuffled_prompts"], result["unconditioned"]
    for key in ("colour", "camera"):
        assert model[key] >= MIN_RATE[key], (key, model)
        assert model[key] >= shuffled[key] + MARGIN and model[key] >= unconditioned[key] + MARGIN, (key, result)
    # the camera comes from the moving noise, not from the UNet's reading of the words (card)
    assert result["words_only"]["camera"] <= unconditioned["camera"] + 0.25, result["words_only"]
    assert result["moving_noise_only"]["camera"] >= MIN_RATE["camera"], result["moving_noise_only"]


def test_lead_puts_the_dominant_colour_first_on_the_shipped_model():
    """The card's first clips whose video made the caption's second colour dominant without the lead and the
    caption's own colour with it (the default): sampled again (same prompt, seed = index), each comes out as the
    card recorded, the colour measured by the captioner's extractor against the caption's words."""
    from svd_fast.text_to_video import TWO_COLOURS

    card = json.loads((REPO / "bench" / "results" / BENCH_FILE).read_text())
    flipped = [(i, c) for i, c in enumerate(card["clips"]) if TWO_COLOURS.search(c["caption"])
               and c["no_lead"]["colour"] == TWO_COLOURS.search(c["caption"]).group(3)
               and c["model"]["colour"] == c["target"]["colour"]][:4]
    assert len(flipped) == 4
    pipe = SVDTextToVideoPipeline.from_pretrained(DEFAULT_T2V, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    right = {"auto": 0, None: 0}
    for i, clip in flipped:
        for lead in right:
            video = pipe(clip["caption"], num_inference_steps=card["steps"], guidance_scale=card["guidance_scale"],
                         lead_prompt=lead, output_type="np", generator=torch.Generator().manual_seed(i)).frames[0]
            found = clip_attributes((video * 255).round().astype(np.uint8), pipe.config.fps)
            right[lead] += found["colour"] == clip["target"]["colour"]
    assert right["auto"] >= 3 and right[None] <= 1, right  # one clip may flip with another machine's numerics


def test_recipe_evaluate_refuses_a_negative_first_caption(capsys):
    with pytest.raises(SystemExit) as exc:
        t2v_recipe().main(["--evaluate", str(DEFAULT_T2V), "--first-caption", "-1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --first-caption must be >= 0, got -1"], err


def test_recipe_trains_only_the_stages_after_the_last_finished_one(tmp_path):
    """A work folder holding a later stage's weights (e.g. seeded with a shipped model's UNet) trains only the
    stages after it; without any, every stage with steps runs; a stage of 0 steps never does."""
    recipe = t2v_recipe()
    stages = recipe.Schedule().stages
    names = [s.name for s in stages]
    assert recipe.stages_to_run(tmp_path, stages) == list(range(len(stages)))
    (tmp_path / names[2]).mkdir()
    (tmp_path / names[2] / "unet.safetensors").write_bytes(b"")
    assert recipe.stages_to_run(tmp_path, stages) == [2, 3]  # stage III loads its weights, stage IV trains
    (tmp_path / names[0]).mkdir()
    (tmp_path / names[0] / "unet.safetensors").write_bytes(b"")
    assert recipe.stages_to_run(tmp_path, stages) == [2, 3]  # an earlier stage's weights change nothing
    assert recipe.stages_to_run(tmp_path, recipe.LAB.stages) == []  # LAB's stages III and IV have 0 steps
    assert recipe.stages_to_run(tmp_path / "empty", recipe.LAB.stages) == [0, 1]


def test_recipe_start_seeds_the_work_folder_with_a_trained_model(pipe, tmp_path):
    """--start MODEL: the model's UNet becomes stage III's output (so only stage IV trains) and its text tower
    the recipe's (the same token states); an image-to-video model is refused."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    from svd_fast.text_to_video import encode_prompt

    recipe = t2v_recipe()
    pipe.save_pretrained(tmp_path / "model")
    work = tmp_path / "work"
    assert recipe.seed_work(tmp_path / "model", work, recipe.Schedule()) == "stage3-finetune"
    assert recipe.stages_to_run(work, recipe.Schedule().stages) == [2, 3]
    seeded = open_tensors(work / "stage3-finetune" / "unet.safetensors")
    for name, tensor in pipe.unet.state_dict().items():
        torch.testing.assert_close(seeded.read(name), tensor.float(), atol=0, rtol=0)
    tokenizer = AutoTokenizer.from_pretrained(work / "text_tower" / "tokenizer")
    text_encoder = CLIPTextModelWithProjection.from_pretrained(work / "text_tower" / "text_encoder").eval()
    prompts = ["a dim scene, mostly blue; camera zooms in", ""]
    with torch.no_grad():
        torch.testing.assert_close(encode_prompt(tokenizer, text_encoder, prompts), pipe.encode_prompt(prompts).float())
    with pytest.raises(ValueError, match="not a text-to-video one"):
        recipe.seed_work(REPO / "svd_fast" / "assets" / "default_model", tmp_path / "other", recipe.Schedule())


def test_word_probe_finds_the_colour_words_used():
    """The recipe's --probe on the shipped model: a wrong dominant colour in the caption raises the x0 error
    of noised held-out clips (measured on these 8 clips at sigma 10: worse in 94% of swaps, +12% error;
    the stage III model: 94%, +19%; on 24 clips 84%). The camera words are not asserted: the model ignores them (README, text-to-video)."""
    recipe = t2v_recipe()
    result = recipe.word_probe(DEFAULT_T2V, clips=8, sigmas=(10.0,))
    colour = result["colour"]["10.0"]
    assert result["clips"] == 8 and len(result["colours"]) >= 4
    assert colour["fraction_swapped_worse"] >= 0.75, result
    assert colour["swapped_error"] >= 1.05 * colour["own_error"], result
    # "order": the clips whose caption names two colours, each probed with the colours' places swapped
    two = [c for c in itertools.islice((p for p in recipe._held_out_captions() if p["camera"] != "static camera"), 8)
           if re.search(r"mostly \w+ \(\d+%\) and \w+ \(\d+%\)", c["caption"])]
    assert result["order_clips"] == len(two) >= 2, result


def test_shipped_model_converts_to_sgm_and_back(tmp_path, capsys):
    """python -m svd_fast.convert on the shipped text model: sgm file and back to a folder, same video."""
    from svd_fast.convert import main as convert

    assert convert([str(DEFAULT_T2V), str(tmp_path / "t2v.safetensors"), "--to", "sgm"]) == 0
    assert convert([str(tmp_path / "t2v.safetensors"), str(tmp_path / "back"), "--to", "diffusers"]) == 0
    assert "wrote diffusers checkpoint" in capsys.readouterr().out
    videos = []
    for path in (DEFAULT_T2V, tmp_path / "t2v.safetensors", tmp_path / "back"):
        pipe = SVDTextToVideoPipeline.from_pretrained(path, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        videos.append(pipe("a dim scene, mostly blue; camera zooms in", num_inference_steps=2,
                           generator=torch.Generator().manual_seed(0), output_type="latent").frames)
    torch.testing.assert_close(videos[1], videos[0], atol=0, rtol=0)
    torch.testing.assert_close(videos[2], videos[0], atol=0, rtol=0)
