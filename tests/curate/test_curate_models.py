"""CLIP scores and captioners against direct transformers calls on tiny random-weight models."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from svd_fast.curate.captions import (Captioner, HFImageCaptioner, HFTextGenerator, HFVideoCaptioner, TrivialCaptioner,
                                      build_captioner)
from svd_fast.curate.clip_scores import ClipScorer, load_aesthetic_head
from svd_fast.curate.config import CaptionConfig
from svd_fast.curate.frames import caption_indices
from svd_fast.curate.synthetic import PALETTE

from test_curate_scores import clip_frames


def random_frames(count=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 48, 64, 3), dtype=np.uint8)


def test_clip_scores_match_clip_forward(tiny_clip):
    from transformers import CLIPModel, CLIPProcessor

    model_path, head_path = tiny_clip
    frames, caption = random_frames(), "a blue scene"
    scores = ClipScorer(model_path, head_path).score(frames, caption)
    # Reference: CLIPModel's own forward (normalised embeddings, logits = scale * cosine).
    model, processor = CLIPModel.from_pretrained(model_path).eval(), CLIPProcessor.from_pretrained(model_path)
    with torch.no_grad():
        out = model(**processor(text=[caption], images=list(frames), return_tensors="pt", padding=True))
    cosine = out.logits_per_image[:, 0] / model.logit_scale.exp()
    assert scores["clip_score"] == pytest.approx(cosine.mean().item(), abs=1e-5)
    head = load_file(head_path)
    hidden = out.image_embeds @ head["layers.0.weight"].T + head["layers.0.bias"]  # LAION-style: no activation
    aesthetic = hidden @ head["layers.2.weight"].T + head["layers.2.bias"]
    assert scores["aesthetic"] == pytest.approx(aesthetic.mean().item(), abs=1e-5)


def test_clip_score_without_caption_or_head(tiny_clip):
    scores = ClipScorer(tiny_clip[0]).score(random_frames(), "")
    assert np.isnan(scores["clip_score"]) and np.isnan(scores["aesthetic"])


def test_aesthetic_head_errors(tmp_path, tiny_clip):
    save_file({"layers.0.weight": torch.zeros(4, 16), "layers.1.weight": torch.zeros(1, 5)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="layer 1 takes 5 inputs but the previous layer gives 4"):
        load_aesthetic_head(str(tmp_path / "bad.safetensors"))
    save_file({"weight": torch.zeros(2, 16)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ValueError, match="must output one score"):
        load_aesthetic_head(str(tmp_path / "two.safetensors"))
    save_file({"weight": torch.zeros(1, 768)}, str(tmp_path / "wide.safetensors"))
    with pytest.raises(ValueError, match="expects 768-d embeddings but the CLIP model gives 16-d"):
        ClipScorer(tiny_clip[0], str(tmp_path / "wide.safetensors"))
    with pytest.raises(ValueError, match="clip.model_path"):
        ClipScorer(str(tmp_path))


def test_gelu_head_applies_activation(tmp_path):
    weights = {"net.0.weight": torch.randn(3, 4), "net.1.weight": torch.randn(1, 3)}
    save_file(weights, str(tmp_path / "h.safetensors"))
    head = load_aesthetic_head(str(tmp_path / "h.safetensors"), "gelu")
    x = torch.randn(2, 4)
    expected = torch.nn.functional.gelu(x @ weights["net.0.weight"].T) @ weights["net.1.weight"].T
    torch.testing.assert_close(head(x), expected)


def test_trivial_captioner_describes_colour_and_motion(cut_videos):
    """Ground truth from the renderer: background colour, a still camera and the square's direction."""
    video, captioner = cut_videos[1], TrivialCaptioner()
    colours = ['blue', 'green', 'purple', 'white', 'grey', 'orange', 'cyan']
    for index, expected in [(0, "mostly right"), (1, "nothing moves on its own"), (5, "mostly left"),
                            (6, "nothing moves on its own")]:
        truth = video.clips[index]
        frames = clip_frames(video, truth)
        assert f"scene, mostly {colours[index]} (" in captioner.caption_image(frames.key[1])
        times = [(i - truth.start) / video.fps for i in caption_indices(truth.start, truth.end, len(frames.caption))]
        caption = captioner.caption_video(frames.caption, times)
        assert "; static camera; " in caption and expected in caption, caption


def test_differential_strategy_follows_changes():
    blue, green = (np.full((32, 48, 3), PALETTE[c], np.uint8) for c in ("blue", "green"))
    trivial = TrivialCaptioner()
    captioner = Captioner("sharegpt4video", trivial, trivial, trivial, trivial, primary="summary")
    result = captioner.captions(np.stack([blue] * 3), np.stack([blue, blue, green]), [0.0, 1.0, 2.0])
    assert result["caption_video"].splitlines() == ["0.0s: a dim scene, mostly blue (100%)", "1.0s: nothing changes",
                                                    "2.0s: the scene turns from blue to green"]
    assert result["caption"] == result["caption_summary"] == \
        "a dim scene, mostly blue (100%); nothing changes; the scene turns from blue to green"


def test_paper_strategy_with_trivial_parts():
    frames = np.stack([np.full((32, 48, 3), PALETTE["yellow"], np.uint8)] * 4)
    result = build_captioner(CaptionConfig()).captions(frames[:3], frames, [0.0, 0.5, 1.0, 1.5])
    image = "a bright scene, mostly yellow (100%)"
    video = image + "; static camera; nothing moves on its own"
    assert result == {"caption_image": image, "caption_video": video, "caption_summary": f"{image}; {video}",
                      "caption": image}


def _generate(model, **inputs):
    return model.generate(**inputs, max_new_tokens=6, do_sample=False)


def test_hf_captioners_match_direct_generate(tiny_captioners):
    from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer

    frames = random_frames(8, seed=2)
    processor = AutoProcessor.from_pretrained(tiny_captioners["image"])
    image_model = AutoModelForCausalLM.from_pretrained(tiny_captioners["image"]).eval()
    expected = processor.batch_decode(_generate(image_model, **processor(images=frames[0], return_tensors="pt")),
                                      skip_special_tokens=True)[0].strip()
    assert HFImageCaptioner(tiny_captioners["image"], 6).caption_image(frames[0]) == expected != ""

    # The video model has 4 frame slots: the captioner spreads 4 of the 8 frames over the clip.
    video_model = AutoModelForCausalLM.from_pretrained(tiny_captioners["video"]).eval()
    pixels = processor(images=list(frames[[0, 2, 5, 7]]), return_tensors="pt")["pixel_values"][None]
    expected = processor.batch_decode(_generate(video_model, pixel_values=pixels), skip_special_tokens=True)[0].strip()
    assert HFVideoCaptioner(tiny_captioners["video"], 6).caption_video(frames) == expected != ""

    tokenizer = AutoTokenizer.from_pretrained(tiny_captioners["summary"])
    lm = AutoModelForCausalLM.from_pretrained(tiny_captioners["summary"]).eval()
    prompt = HFTextGenerator.SUMMARY_PROMPT.format(lines="- a blue scene\n- a scene moving left")
    inputs = tokenizer(prompt, return_tensors="pt")
    tokens = _generate(lm, **inputs, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(tokens[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert HFTextGenerator(tiny_captioners["summary"], 6).summarise(["a blue scene", "a scene moving left"]) == expected
    assert expected  # the tiny models are set up to produce words, so the comparisons are not '' == ''



@pytest.mark.parametrize("strategy", ["paper", "sharegpt4video"])
def test_hf_backend_builds_both_strategies(tiny_captioners, strategy):
    config = CaptionConfig(strategy=strategy, backend="hf", image_model=tiny_captioners["image"],
                           video_model=tiny_captioners["video"], summary_model=tiny_captioners["summary"],
                           max_new_tokens=4, primary="video")
    frames = random_frames(4, seed=3)
    result = build_captioner(config).captions(frames[:3], frames, [0.0, 0.5, 1.0, 1.5])
    assert set(result) == {"caption", "caption_image", "caption_video", "caption_summary"}
    assert result["caption"] == result["caption_video"]
    if strategy == "sharegpt4video":
        assert len(result["caption_video"].splitlines()) == 4


def test_hf_backend_needs_model_paths():
    with pytest.raises(ValueError, match="captions.image_model, captions.summary_model, captions.video_model"):
        build_captioner(CaptionConfig(backend="hf"))


def test_caption_frame_times_cover_the_clip():
    assert caption_indices(10, 50, 5) == [10, 20, 30, 39, 49]
