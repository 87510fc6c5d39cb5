"""Video quality metrics, and the VAE / image-encoder trainers of small models."""
import copy
import dataclasses
import itertools

import numpy as np
import pytest
import torch

from svd_fast.config import SVDConfig
from svd_fast.train.autoencoder import AutoencoderTraining, calibrate_scaling_factor, reconstruction_psnr, train_vae
from svd_fast.train.image_encoder import ImageEncoderTraining, encoder_loss, train_image_encoder
from svd_fast.train.procedural import random_clip_spec, render_clip
from svd_fast.train.video_metrics import first_frame_psnr, mean_flow, psnr, video_report, warp_consistency


def _video(seed, frames=6, size=48):
    clip, flow = render_clip(random_clip_spec(seed), frames, size, size)
    return ((clip + 1) / 2).permute(0, 2, 3, 1).numpy(), flow


def test_metrics_on_videos_with_known_motion():
    video, flow = _video(2)
    truth = float(flow.norm(dim=1).mean())
    assert abs(mean_flow(video) - truth) < 0.4 * truth
    static = np.repeat(video[:1], 6, axis=0)
    assert mean_flow(static) < 0.02 and first_frame_psnr(static, video[0]) == float("inf")
    # Frames in random order are not a consistent video; the real order is.
    shuffled = video[[0, 4, 1, 5, 2, 3]]
    assert warp_consistency(video) > warp_consistency(shuffled) + 3
    noisy = np.clip(video[0] + np.random.default_rng(0).normal(0, 0.1, video[0].shape), 0, 1)
    assert 18 < psnr(noisy, video[0]) < 22  # sigma 0.1 noise: about 20 dB
    assert set(video_report(video, video[0])) == {"first_frame_psnr", "mean_flow", "warp_consistency"}


def _clips(batch, frames, size, seeds):
    for seed in seeds:
        yield torch.stack([render_clip(random_clip_spec(seed * batch + i), frames, size, size)[0] for i in range(batch)])


def test_vae_training_learns_to_reconstruct():
    config = SVDConfig.from_name("tiny").vae
    clips = torch.stack([render_clip(random_clip_spec(i), 2, 32, 32)[0] for i in range(2)])
    untrained = train_vae(config, itertools.repeat(clips), AutoencoderTraining(steps=1, lr=1e-9))
    settings = AutoencoderTraining(steps=40, lr=3e-3, warmup_steps=5, final_lr_fraction=1.0)  # constant after warm-up
    trained = train_vae(config, itertools.repeat(clips), settings)
    assert reconstruction_psnr(trained, clips) > reconstruction_psnr(untrained, clips) + 3
    scale = calibrate_scaling_factor(trained, clips)
    with torch.no_grad():
        assert abs(float((trained.encode(clips.flatten(0, 1)) * scale).std()) - 1) < 1e-3


def test_vae_learning_rate_warms_up_then_decays_to_its_floor():
    settings = AutoencoderTraining(steps=101, lr=1e-3, warmup_steps=10, final_lr_fraction=0.1)
    lrs = [settings.lr_at(step) for step in range(settings.steps)]
    assert lrs[0] == pytest.approx(1e-4 * (0.1 + 0.9 * 1.0))  # 1/10 of warm-up, cosine still at 1
    assert lrs[50] == pytest.approx(1e-3 * 0.55)  # half way: cosine factor 0.5
    assert lrs[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_image_encoder_training_separates_clips():
    config = dataclasses.replace(SVDConfig.from_name("tiny").image_encoder, patch_size=56)
    batch = _clips(8, 3, 32, [0])
    clips = next(batch)
    settings = ImageEncoderTraining(steps=40, lr=3e-3, warmup_steps=5)
    encoder = train_image_encoder(config, itertools.repeat(clips), settings)
    probe, scale = torch.nn.Linear(config.projection_dim, 48), torch.nn.Parameter(torch.tensor(2.659))
    torch.manual_seed(0)
    before, _ = encoder_loss(train_image_encoder(config, iter([clips]), dataclasses.replace(settings, steps=0)), probe, scale, clips)
    torch.manual_seed(0)
    after, parts = encoder_loss(encoder, probe, scale, clips)
    assert float(after) < 0.5 * float(before) and parts["accuracy"] >= 0.75


def test_gradient_loss_is_zero_for_a_brightness_shift_and_sees_a_blur():
    from svd_fast.train.autoencoder import gradient_l1

    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert float(gradient_l1(image + 0.3, image)) == pytest.approx(0.0, abs=1e-6)  # flat change: no edges moved
    blurred = torch.nn.functional.avg_pool2d(image, 3, stride=1, padding=1, count_include_pad=False)
    # By hand: differences of a ramp vs a constant picture.
    ramp = torch.arange(4.0).expand(1, 1, 2, 4)  # two equal rows: dy = 0
    assert float(gradient_l1(ramp, torch.zeros_like(ramp))) == pytest.approx(0.5 * (1.0 + 0.0))  # dx = 1, dy = 0
    assert float(gradient_l1(blurred, image)) > 0.1


def test_image_reconstruction_reports_psnr_and_colour_shift_of_each_image():
    from svd_fast.train.autoencoder import image_reconstruction

    class Identity(torch.nn.Module):  # a perfect autoencoder, shifting green by +0.02 (in [-1, 1])
        def encode(self, x):
            return x

        def decode(self, z, num_frames):
            return z + torch.tensor([0.0, 0.02, 0.0]).view(1, 3, 1, 1)

    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    rows = image_reconstruction(Identity(), images)
    # error 0.01 on [0, 1] in one channel of three: MSE 1e-4 / 3
    assert rows[0]["psnr_db"] == pytest.approx(10 * np.log10(3 / 1e-4), abs=1e-3)
    assert rows[1]["colour_shift_255"] == pytest.approx(0.01 * 255, abs=1e-3)

    class ShiftsLaterFrames(Identity):  # the first frame of each clip exact, the other frames green +0.02
        def decode(self, z, num_frames):
            later = (torch.arange(len(z)) % num_frames != 0).float().view(-1, 1, 1, 1)
            return z + later * torch.tensor([0.0, 0.02, 0.0]).view(1, 3, 1, 1)

    assert image_reconstruction(ShiftsLaterFrames(), images)[0]["psnr_db"] == float("inf")
    rows = image_reconstruction(ShiftsLaterFrames(), images, num_frames=4)  # still clips: 3 of 4 frames shifted
    assert rows[0]["psnr_db"] == pytest.approx(10 * np.log10(3 / 1e-4 * 4 / 3), abs=1e-3)
    assert rows[1]["colour_shift_255"] == pytest.approx(0.75 * 0.01 * 255, abs=1e-3)


def test_identity_frame_mixing_makes_the_decoder_decode_each_frame_on_its_own():
    """With the frame-mixing conv at identity, a clip decodes to the frames its last spatial conv
    gives (checked against the decoder's layers called by hand), and no frame sees another."""
    from svd_fast.config import VAEConfig
    from svd_fast.train.autoencoder import identity_frame_mixing
    from svd_fast.vae import TemporalVAE

    torch.manual_seed(0)
    vae = identity_frame_mixing(TemporalVAE(VAEConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                                      latent_channels=4))).eval()
    z = torch.randn(3, 4, 4, 4)
    with torch.no_grad():
        clip = vae.decode(z, num_frames=3)
        dec = vae.decoder
        x = dec.mid_block(dec.conv_in(z), 3)
        for block in dec.up_blocks:
            x = block(x, 3)
        by_hand = dec.conv_out(torch.nn.functional.silu(dec.conv_norm_out(x)))
    torch.testing.assert_close(clip, by_hand, rtol=1e-5, atol=1e-5)
    assert float(vae.decoder.time_conv_out.weight.abs().sum()) == 3.0  # one unit tap per colour channel


def test_patch_pca_matches_an_svd_of_the_patch_matrix_and_round_trips_its_span():
    from svd_fast.train.autoencoder import PatchPCA

    g = torch.Generator().manual_seed(0)
    # Images whose 2x2 patches (12 values) lie in a 5-dimensional affine subspace, plus one image
    # to compare the code with numpy's SVD of the centred patch matrix.
    basis = torch.randn(12, 5, generator=g, dtype=torch.float64)
    offset = torch.randn(12, generator=g, dtype=torch.float64)
    coeff = torch.randn(40, 6, 6, 5, generator=g, dtype=torch.float64) * torch.tensor([5.0, 4, 3, 2, 1], dtype=torch.float64)
    patches = coeff @ basis.T + offset  # (40, 6, 6, 12)
    images = torch.nn.functional.pixel_shuffle(patches.permute(0, 3, 1, 2), 2).float()  # (40, 3, 12, 12)
    pca = PatchPCA.fit(images, factor=2, components=5)
    code = pca.encode(images)
    assert code.shape == (40, 5, 6, 6)
    torch.testing.assert_close(pca.decode(code), images, atol=1e-4, rtol=0)  # the span is kept exactly
    flat = code.permute(0, 2, 3, 1).reshape(-1, 5).double()
    torch.testing.assert_close(flat.std(0, unbiased=True), torch.ones(5, dtype=torch.float64), atol=1e-3, rtol=0)  # whitened
    rows = patches.reshape(-1, 12).numpy()
    _, singular, vt = np.linalg.svd(rows - rows.mean(0), full_matrices=False)
    # Each code channel is the projection on a right singular vector (up to sign), divided by its std.
    reference = (rows - rows.mean(0)) @ vt[:5].T / (singular[:5] / np.sqrt(len(rows) - 1))
    ours = flat.numpy()
    for k in range(5):
        assert min(np.abs(ours[:, k] - reference[:, k]).max(), np.abs(ours[:, k] + reference[:, k]).max()) < 1e-3
    # Fewer components than the span: the reconstruction loses exactly the dropped variance.
    two = PatchPCA.fit(images, factor=2, components=2)
    lost = (two.decode(two.encode(images)) - images).double().pow(2).sum() / (len(rows) - 1)
    assert float(lost) == pytest.approx(float((singular[2:] ** 2).sum() / (len(rows) - 1)), rel=1e-3)


def test_the_patch_pca_anchor_pulls_the_encoder_to_the_pca_code():
    from svd_fast.train.autoencoder import PatchPCA, vae_loss

    config = SVDConfig.from_name("tiny").vae
    clips = torch.stack([render_clip(random_clip_spec(i), 2, 32, 32)[0] for i in range(2)])
    frames = clips.flatten(0, 1)
    pca = PatchPCA.fit(frames, config.downsample_factor, config.latent_channels)

    def distance(vae):
        with torch.no_grad():
            return float((vae.encode(frames) - pca.encode(frames)).pow(2).mean())

    settings = AutoencoderTraining(steps=30, lr=3e-3, warmup_steps=5, final_lr_fraction=1.0)
    free = train_vae(config, itertools.repeat(clips), settings)
    anchored = train_vae(config, itertools.repeat(clips), dataclasses.replace(settings, anchor_weight=10.0), anchor=pca)
    assert distance(anchored) < 0.5 * distance(free)
    _, parts = vae_loss(anchored, clips, 0.0, torch.Generator().manual_seed(0), anchor=pca, anchor_weight=1.0)
    assert parts["anchor"] == pytest.approx(distance(anchored), rel=0.05)


def test_decoder_finetune_fixes_a_colour_cast_and_leaves_the_encoder_alone():
    """A VAE whose decoder tints green (its last conv's green bias raised): the fine-tune brings the
    clips' channel means back (colour_error against the hand-computed means) and touches no encoder
    weight; without the colour term the same steps remove less of the cast."""
    from svd_fast.train.autoencoder import DecoderFineTune, colour_error, finetune_decoder

    config = SVDConfig.from_name("tiny").vae
    clips = torch.stack([render_clip(random_clip_spec(i), 2, 32, 32)[0] for i in range(2)])
    settings = AutoencoderTraining(steps=40, lr=3e-3, warmup_steps=5, final_lr_fraction=1.0)

    trained = train_vae(config, itertools.repeat(clips), settings)
    with torch.no_grad():
        trained.decoder.time_conv_out.bias[1] += 0.3  # the last layer: +0.15 in [0, 1] on green

    def tinted():
        return copy.deepcopy(trained)

    def cast(vae):
        with torch.no_grad():
            recon = vae.decode(vae.encode(clips.flatten(0, 1)), num_frames=2).unflatten(0, (2, 2))
        by_hand = (recon.mean(dim=(1, 3, 4)) - clips.mean(dim=(1, 3, 4))).abs().mean()
        assert float(colour_error(recon, clips)) == pytest.approx(float(by_hand))
        return float(by_hand)

    vae = tinted()
    start, encoder = cast(vae), {k: v.clone() for k, v in vae.state_dict().items() if not k.startswith("decoder")}
    finetune_decoder(vae, itertools.repeat(clips), DecoderFineTune(steps=30, lr=1e-3, warmup_steps=1))
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in encoder.items())
    assert all(p.requires_grad for p in vae.parameters()) and not vae.training
    without = tinted()
    finetune_decoder(without, itertools.repeat(clips), DecoderFineTune(steps=30, lr=1e-3, warmup_steps=1, colour_weight=0))
    assert start > 0.09 and cast(vae) < 0.3 * start and cast(vae) < cast(without), (start, cast(vae), cast(without))
