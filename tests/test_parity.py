"""Training against source cues (issue 14): the parity pipeline, source-balanced sampling, self-blended
pseudo-fakes, NPR residuals and a threshold chosen for a false-positive rate."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mfclip_cli.data.crops import CropCache, CropEntry, prepare_crops
from mfclip_cli.data.dataset import CropDataset, recut_with_parity
from mfclip_cli.data.layouts import read_dataset
from mfclip_cli.data.manifest import Record
from mfclip_cli.data.taxonomy import Label
from mfclip_cli.data.transforms import ParityChain, SelfBlend, parity_chain
from mfclip_cli.errors import MfclipError
from mfclip_cli.faces import template_in_crop
from mfclip_cli.faces.types import CropPolicy
from mfclip_cli.model import build_model, load_preset, read_checkpoint_meta
from mfclip_cli.model.noise import NPRFilter
from mfclip_cli.train import TrainOptions, run_training, self_blended_entries, source_balanced_weights

POLICY = CropPolicy(detector="retinaface", size=224, margin=0.0)


def _entry(y: int, source: str, i: int) -> CropEntry:
    label = Label.fake("entire_synthesis", "gan", "stylegan2") if y else Label.real()
    return CropEntry(Record(f"/x/{source}/{i}.jpg", label, source, f"{source}/{i}"), f"/c/{source}{i}.png", f"{i:064x}")


# --- the parity chain ------------------------------------------------------------------------------------
def test_parity_chain_never_enlarges_and_reports_its_scales():
    img = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    chain = ParityChain(p_suite=0.0, p_grey=0.0)
    for k in range(20):
        out, (sx, sy) = chain(img, face_side=200.0, rng=np.random.default_rng(k))
        assert out.shape[0] <= 300 and out.shape[1] <= 400
        assert sx == pytest.approx(out.shape[1] / 400) and sy == pytest.approx(out.shape[0] / 300)
    # a face already smaller than any target size is never upscaled
    out, scales = chain(img, face_side=20.0, rng=np.random.default_rng(1))
    assert out.shape == img.shape and scales == (1.0, 1.0)


def test_parity_chain_suite_branch_is_the_suites_256_q90_protocol():
    img = np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    out, (sx, sy) = ParityChain(p_suite=1.0, p_grey=0.0)(img, 150.0, np.random.default_rng(0))
    assert out.shape == (256, 256, 3) and (sx, sy) == (256 / 500, 256 / 300)


def test_parity_chain_draws_the_same_for_the_same_generator_state():
    img = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    a, _ = ParityChain()(img, 120.0, np.random.default_rng(5))
    b, _ = ParityChain()(img, 120.0, np.random.default_rng(5))
    assert np.array_equal(a, b)


def test_parity_chain_names():
    assert parity_chain("off") is None and isinstance(parity_chain("on"), ParityChain)
    assert parity_chain("on").p_sharpen == 0.0 and parity_chain("sharp").p_sharpen == 0.3
    assert (parity_chain("retouch").p_sharpen, parity_chain("retouch").p_smooth) == (0.3, 0.2)
    with pytest.raises(MfclipError, match="valid: off, on, sharp, retouch"):
        parity_chain("maybe")


# the chain with no resize, JPEG or greying, so only its retouching step can change an image
_UNTOUCHED = {"p_suite": 0.0, "p_jpeg": 0.0, "p_grey": 0.0, "face_px": (400.0, 400.0)}


def _detail(img: np.ndarray, rows: slice = slice(None), cols: slice = slice(None)) -> float:
    """Mean absolute Laplacian of the grey image (over ``rows`` x ``cols``): its high-frequency energy."""
    import cv2

    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.abs(cv2.Laplacian(grey, cv2.CV_32F))[rows, cols].mean())


def test_sharpening_chain_sharpens_its_share_and_leaves_the_rest_as_on_would(read_crop, face_paths):
    img = read_crop(face_paths["real/london_faceset"][2])
    plain, sharp = ParityChain(**_UNTOUCHED), ParityChain(**_UNTOUCHED, p_sharpen=0.3)
    base, sharpened = _detail(img), 0
    for k in range(40):
        out, _ = sharp(img, 200.0, np.random.default_rng(k))
        a, _ = plain(img, 200.0, np.random.default_rng(k))
        assert np.array_equal(a, img)  # no resize, no JPEG: "on" hands the image back
        if not np.array_equal(out, img):
            assert _detail(out) > 1.15 * base
            sharpened += 1
    assert 5 <= sharpened <= 20  # about 30 % of 40


def test_retouching_chain_also_smooths_a_share_and_otherwise_draws_as_sharp(read_crop, face_paths):
    img = read_crop(face_paths["real/london_faceset"][2])
    sharp = ParityChain(**_UNTOUCHED, p_sharpen=0.3)
    retouch = ParityChain(**_UNTOUCHED, p_sharpen=0.3, p_smooth=0.2)
    base, smoothed = _detail(img), 0
    for k in range(40):
        a, _ = sharp(img, 200.0, np.random.default_rng(k))
        b, _ = retouch(img, 200.0, np.random.default_rng(k))
        if np.array_equal(a, b):
            continue
        assert np.array_equal(a, img)  # only images "sharp" left alone are smoothed
        assert _detail(b) < 0.9 * base
        smoothed += 1
    assert 3 <= smoothed <= 15  # about 20 % of 40
    with pytest.raises(ValueError, match="at most 1"):
        ParityChain(p_sharpen=0.7, p_smooth=0.5)


def test_recut_keeps_the_framing_of_the_cached_crop(face_paths, tmp_path):
    """The face geometry travels with the crop: an identity chain re-cuts the cached crop exactly, and a
    halving chain re-cuts the same framing at lower resolution."""
    path = face_paths["real/london_faceset"][0]
    rec = Record(str(path), Label.real(), "london_faceset", "g")
    [entry], skipped = prepare_crops([rec], POLICY, CropCache(tmp_path, POLICY), workers=1, geometry=True)
    assert not skipped and entry.face is not None and entry.face.landmarks is not None
    import cv2

    cached = cv2.cvtColor(cv2.imread(entry.crop_path), cv2.COLOR_BGR2RGB)
    identity = ParityChain(p_suite=0.0, p_jpeg=0.0, p_grey=0.0, face_px=(4096.0, 4096.0))
    same = recut_with_parity(str(path), entry.face, POLICY, identity, np.random.default_rng(0))
    assert np.array_equal(same, cached)
    face_side = max(entry.face.width, entry.face.height)
    half = ParityChain(p_suite=0.0, p_jpeg=0.0, p_grey=0.0, face_px=(face_side / 2, face_side / 2))
    small = recut_with_parity(str(path), entry.face, POLICY, half, np.random.default_rng(0))
    blur = (lambda x: cv2.GaussianBlur(x.astype(np.float32), (0, 0), 3.0))
    corr = np.corrcoef(blur(small).ravel(), blur(cached).ravel())[0, 1]
    assert corr > 0.97


def test_geometry_is_added_to_cache_entries_stored_without_it(face_paths, tmp_path):
    path = face_paths["real/london_faceset"][1]
    rec = Record(str(path), Label.real(), "london_faceset", "g")
    cache = CropCache(tmp_path, POLICY)
    prepare_crops([rec], POLICY, cache, workers=1)
    for f in Path(cache.root).rglob("*.face.json"):
        f.unlink()  # a cache written before geometry was stored
    [plain], _ = prepare_crops([rec], POLICY, cache, workers=1)
    [with_geo], _ = prepare_crops([rec], POLICY, cache, workers=1, geometry=True)
    assert plain.face is None and with_geo.face is not None


# --- sampling and pseudo-fakes ---------------------------------------------------------------------------
def test_source_balanced_weights_halve_the_classes_and_temper_source_sizes():
    entries = ([_entry(0, "big", i) for i in range(400)] + [_entry(0, "small", i) for i in range(100)]
               + [_entry(1, "gan", i) for i in range(50)])
    w = source_balanced_weights(entries)
    y = np.array([e.record.y for e in entries])
    assert w.sum() == pytest.approx(1.0)
    assert w[y == 0].sum() == pytest.approx(0.5) and w[y == 1].sum() == pytest.approx(0.5)
    big, small = w[:400].sum(), w[400:500].sum()
    assert big / small == pytest.approx(2.0)  # 4x the images, sqrt(4) = 2x the draws


def test_self_blended_entries_are_fake_copies_of_a_quarter_of_the_reals():
    reals = [_entry(0, "src", i) for i in range(40)]
    sbi = self_blended_entries(reals, seed=0)
    assert len(sbi) == 10
    assert all(e.record.y == 1 and e.record.label.kind == "face_swap" for e in sbi)
    assert {e.crop_path for e in sbi} <= {e.crop_path for e in reals}
    assert self_blended_entries(reals, seed=0) == sbi


def test_self_blend_changes_the_inner_face_and_leaves_the_corners(read_crop, face_paths):
    crop = read_crop(face_paths["real/london_faceset"][2])
    blend = SelfBlend(tuple(map(tuple, template_in_crop(POLICY).tolist())))
    out = blend(crop, np.random.default_rng(3))
    assert out.shape == crop.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - crop.astype(int)).sum(axis=2)
    assert diff[100:130, 95:130].mean() > 2.0  # between the eyes and the mouth
    assert diff[:12, :12].max() == 0 and diff[-12:, -12:].max() == 0
    assert np.array_equal(out, blend(crop, np.random.default_rng(3)))


def test_soft_self_blend_never_sharpens_the_pasted_face(read_crop, face_paths):
    crop = read_crop(face_paths["real/london_faceset"][2])
    points = tuple(map(tuple, template_in_crop(POLICY).tolist()))
    soft, sharp, half = (SelfBlend(points, p_sharpen=p) for p in (0.0, 1.0, 0.5))

    def detail(img):  # between the eyes and the mouth
        return _detail(img, slice(95, 135), slice(90, 135))

    sharpened = 0
    for seed in range(10):  # same draws (colour, shift, mask) apart from the softened or sharpened copy
        a, b = soft(crop, np.random.default_rng(seed)), sharp(crop, np.random.default_rng(seed))
        assert detail(a) < 0.9 * detail(b)
        # the default draws one or the other from the same random values
        c = half(crop, np.random.default_rng(seed))
        assert np.array_equal(c, a) or np.array_equal(c, b)
        sharpened += int(np.array_equal(c, b))
    assert 0 < sharpened < 10


def test_dataset_blends_only_the_entries_from_blend_from(read_crop, face_paths, tmp_path):
    import cv2

    from mfclip_cli.model.preprocess import PreprocessConfig

    crop = read_crop(face_paths["real/london_faceset"][3])
    png = tmp_path / "c.png"
    cv2.imwrite(str(png), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    e = CropEntry(Record("/x.jpg", Label.real(), "s", "g"), str(png), "0" * 64)
    blend = SelfBlend(tuple(map(tuple, template_in_crop(POLICY).tolist())))
    ds = CropDataset([e, e], PreprocessConfig(), blend=blend, blend_from=1)
    plain, blended = ds[0][0], ds[1][0]
    assert not torch.equal(plain, blended)
    assert torch.equal(plain, CropDataset([e], PreprocessConfig())[0][0])


# --- NPR residuals ---------------------------------------------------------------------------------------
def test_npr_is_zero_on_a_nearest_upsampled_image_and_not_elsewhere():
    small = torch.rand(2, 3, 28, 28)
    up = torch.nn.functional.interpolate(small, scale_factor=2.0, mode="nearest")
    assert NPRFilter()(up).abs().max() == 0
    assert NPRFilter()(torch.rand(2, 3, 56, 56)).abs().mean() > 0.1


def test_noise_residual_option_builds_an_npr_branch_of_the_same_shape():
    base = load_preset("tiny")
    npr = build_model(base.with_overrides(noise_residual="npr"), seed=0).eval()
    srm = build_model(base, seed=0).eval()
    assert isinstance(npr.noise.srm, NPRFilter)
    x = torch.rand(2, 3, base.preprocess.patch_size, base.preprocess.patch_size)
    assert npr.noise(x).shape == srm.noise(x).shape
    with pytest.raises(MfclipError, match="noise residual"):
        base.with_overrides(noise_residual="dct")


# --- training with all of it -----------------------------------------------------------------------------
def _small_pool(face_paths, data: Path) -> Path:
    """Six faces from each of two real sources and two generators of the pool, as a generic tree."""
    for folder, n in (("real/london_faceset", 6), ("real/utkface", 6),
                      ("fake/entire_synthesis/stylegan2_tpdne", 6), ("fake/entire_synthesis/sdxl_realvisxl", 6)):
        dst = data / folder
        dst.mkdir(parents=True)
        for p in face_paths[folder][:n]:
            shutil.copy(p, dst / p.name)
    return data


@pytest.mark.slow
def test_training_with_fpr_per_source_records_the_binding_real_source(face_paths, tmp_path, train_cache):
    data = _small_pool(face_paths, tmp_path / "data")
    opts = TrainOptions(data=str(data), out=str(tmp_path / "run"), preset="tiny", device="cpu", workers=0,
                        epochs=1, batch_size=8, val_frac=0.4, test_frac=0.2, target_fpr=0.25, fpr_per_source=True,
                        bootstrap=0)
    [result] = run_training(opts).runs

    record = read_checkpoint_meta(result.best_checkpoint).threshold
    with open(Path(result.run_dir) / "val.csv") as fh:
        val_sources = {row["source"] for row in csv.DictReader(fh) if row["label"] == "real"}
    assert record.method == "target_fpr_per_source" and record.target_fpr == 0.25
    assert record.extra["n_sources"] == len(val_sources) >= 1
    assert record.extra["binding_source"] in val_sources


@pytest.mark.slow
def test_training_with_parity_balance_sbi_and_target_fpr_records_them(face_paths, tmp_path, train_cache,
                                                                      monkeypatch):
    from mfclip_cli.train import sampling

    monkeypatch.setattr(sampling, "AE_STEPS", 5)
    data = _small_pool(face_paths, tmp_path / "data")
    opts = TrainOptions(
        data=str(data), out=str(tmp_path / "run"), preset="tiny", device="cpu", workers=0, epochs=1,
        batch_size=8, val_frac=0.3, test_frac=0.2, parity="on", balance="sources", pseudo_fakes="sbi+swap+ae",
        target_fpr=0.25, augment="light", bootstrap=0)
    [result] = run_training(opts).runs
    meta = read_checkpoint_meta(result.best_checkpoint)
    training = meta.training
    assert (training.parity, training.balance, training.pseudo_fakes) == ("on", "sources", "sbi+swap+ae")
    assert meta.threshold.method == "target_fpr" and meta.threshold.target_fpr == 0.25
    assert meta.threshold.fpr <= 0.25
    assert {"self-blended", "swap-blended", "autoencoder"} <= set(meta.taxonomy.generators)
    assert (Path(result.run_dir) / "autoencoder.safetensors").is_file()  # kept for --resume
    records = read_dataset(str(data), "auto")
    assert len(records) == 24


@pytest.mark.slow
def test_train_fakes_pseudo_trains_on_reals_and_self_blends_and_keeps_the_fakes_for_validation_and_test(
        face_paths, tmp_path, train_cache):
    data = _small_pool(face_paths, tmp_path / "data")
    seen: list[dict] = []
    opts = TrainOptions(
        data=str(data), out=str(tmp_path / "run"), preset="tiny", device="cpu", workers=0, epochs=1,
        batch_size=8, val_frac=0.3, test_frac=0.2, parity="on", balance="sources", pseudo_fakes="sbi-soft",
        train_fakes="pseudo", target_fpr=0.25, augment="light", bootstrap=0)
    [result] = run_training(opts, on_event=lambda ev, payload: seen.append(payload) if ev == "data" else None).runs
    run = Path(result.run_dir)

    def labels(name: str) -> list[str]:
        with (run / name).open(newline="") as fh:
            return [row["label"] for row in csv.DictReader(fh)]

    train, val = labels("train.csv"), labels("val.csv")
    assert train and set(train) == {"real"}, "the dataset's fakes are not listed for training"
    assert {"real", "fake"} <= set(val), "validation keeps the dataset's fakes"
    assert seen[0]["train"] == len(train)
    meta = read_checkpoint_meta(result.best_checkpoint)
    assert meta.training.train_fakes == "pseudo"
    assert "self-blended" in meta.taxonomy.generators
    # the held-out test set still holds the dataset's fakes and reports an AUC on them
    [test] = json.loads((run / "test_metrics.json").read_text()).values()
    overall = next(row for row in test["rows"] if row["group_by"] == "all")
    assert overall["n_fake"] > 0 and 0.0 <= overall["auc"] <= 1.0
    # an ordinary run's record does not carry the field at all
    assert "train_fakes" not in replace(meta.training, train_fakes=None).to_json()


def test_train_fakes_pseudo_without_pseudo_fakes_is_refused_before_anything_is_written(tmp_path):
    for bad, message in (({"train_fakes": "pseudo"}, "--pseudo-fakes"), ({"train_fakes": "x"}, "--train-fakes")):
        with pytest.raises(MfclipError, match=message):
            run_training(TrainOptions(data=str(tmp_path), out=str(tmp_path / "run"), **bad))
        assert not (tmp_path / "run" / "config.json").exists()


def test_unknown_training_choices_fail_before_anything_is_written(tmp_path):
    for bad in ({"parity": "x"}, {"balance": "x"}, {"pseudo_fakes": "x"}, {"target_fpr": 1.5},
                {"fpr_per_source": True}, {"weight_average": "x"}):
        opts = TrainOptions(data=str(tmp_path), out=str(tmp_path / "run"), **bad)
        with pytest.raises(MfclipError):
            run_training(opts)
        assert not (tmp_path / "run" / "config.json").exists()


# --- per-crop colour normalisation -----------------------------------------------------------------------
def test_per_crop_colour_norm_ignores_brightness_contrast_and_colour_cast(read_crop, face_paths):
    from mfclip_cli.model.preprocess import PreprocessConfig, prepare_batch

    crop = read_crop(face_paths["real/london_faceset"][4])
    cfg = PreprocessConfig(mask="ellipse", colour_norm="per-crop")
    changed = np.clip(crop.astype(np.float32) * np.array([0.7, 0.8, 0.9]) + 25, 0, 255).round().astype(np.uint8)
    a, noise_a = prepare_batch([crop], cfg)
    b, _ = prepare_batch([changed], cfg)
    assert np.abs(a - b).max() < 0.05  # uint8 rounding only
    fixed, noise_f = prepare_batch([crop], PreprocessConfig(mask="ellipse"))
    assert np.abs(prepare_batch([changed], PreprocessConfig(mask="ellipse"))[0] - fixed).max() > 0.3
    assert np.array_equal(noise_a, noise_f)  # the noise branch still reads the raw patch
    from mfclip_cli.model.preprocess import face_mask

    keep = face_mask(224, "ellipse")
    assert np.allclose(a[0][:, keep].mean(axis=1), 0, atol=1e-4)
    assert np.allclose(a[0][:, keep].std(axis=1), 0.5, atol=1e-3)
    assert np.all(a[0][:, ~keep] == 0)


def test_colour_norm_travels_in_the_model_config():
    cfg = load_preset("tiny").with_overrides(colour_norm="per-crop")
    assert cfg.preprocess.colour_norm == "per-crop"
    from mfclip_cli.model.config import ModelConfig

    assert ModelConfig.from_dict(cfg.to_dict()).preprocess.colour_norm == "per-crop"
    with pytest.raises(ValueError, match="colour normalisation"):
        load_preset("tiny").with_overrides(colour_norm="auto")


# --- swap-blended pseudo-fakes ---------------------------------------------------------------------------
def test_swap_blended_entries_pair_a_quarter_of_the_reals_with_donors_of_other_groups():
    from mfclip_cli.train import swap_blended_entries

    reals = [_entry(0, "src", i) for i in range(40)]
    fakes, donors = swap_blended_entries(reals, seed=0)
    assert len(fakes) == len(donors) == 10
    assert all(f.record.y == 1 and f.record.label.kind == "face_swap" for f in fakes)
    assert all(f.record.group != f"swap:{d.record.group}" and f.crop_path != d.crop_path
               for f, d in zip(fakes, donors, strict=True))
    assert swap_blended_entries(reals, seed=0) == (fakes, donors)
    assert swap_blended_entries(reals, seed=1)[1] != donors


def test_swap_blend_pastes_the_donors_inner_face_and_keeps_the_corners(read_crop, face_paths):
    crop = read_crop(face_paths["real/london_faceset"][2])
    donor = read_crop(face_paths["real/utkface"][1])
    blend = SelfBlend(tuple(map(tuple, template_in_crop(POLICY).tolist())))
    out = blend(crop, np.random.default_rng(5), donor)
    assert out.shape == crop.shape and out.dtype == np.uint8
    inner = (slice(95, 135), slice(85, 140))  # between the eyes and the mouth

    def grey(a):
        return a[inner].astype(float).mean(axis=2)

    def corr(a, b):
        return float(np.corrcoef(grey(a).ravel(), grey(b).ravel())[0, 1])

    # the inner face's structure follows the donor (colour is matched towards the crop, so compare patterns)
    assert corr(out, donor) > corr(out, crop) + 0.2
    diff = np.abs(out.astype(int) - crop.astype(int)).sum(axis=2)
    assert diff[:12, :12].max() == 0 and diff[-12:, -12:].max() == 0
    assert np.array_equal(out, blend(crop, np.random.default_rng(5), donor))


def test_dataset_swaps_the_entries_that_have_a_donor(read_crop, face_paths, tmp_path):
    import cv2

    from mfclip_cli.model.preprocess import PreprocessConfig

    paths = []
    for k, folder in enumerate(("real/london_faceset", "real/utkface")):
        png = tmp_path / f"{k}.png"
        cv2.imwrite(str(png), cv2.cvtColor(read_crop(face_paths[folder][3]), cv2.COLOR_RGB2BGR))
        paths.append(png)
    a, b = (CropEntry(Record(f"/x{k}.jpg", Label.real(), "s", f"g{k}"), str(p), "0" * 64) for k, p in enumerate(paths))
    blend = SelfBlend(tuple(map(tuple, template_in_crop(POLICY).tolist())))
    ds = CropDataset([a, a, a], PreprocessConfig(), blend=blend, blend_from=1, donors={2: b})
    plain, self_blended, swapped = ds[0][0], ds[1][0], ds[2][0]
    assert not torch.equal(plain, swapped) and not torch.equal(self_blended, swapped)
    # the same draws without the donor give the self-blend path, so the donor is what made the difference
    assert torch.equal(CropDataset([a, a, a], PreprocessConfig(), blend=blend, blend_from=1)[2][0],
                       CropDataset([a, a, a], PreprocessConfig(), blend=blend, blend_from=1, donors={})[2][0])


# --- local image branch (patch grid) ---------------------------------------------------------------------
def test_image_patches_average_the_tower_over_a_grid_that_covers_the_crop():
    cfg = load_preset("effnet-lite0").with_overrides(image_patches=3, image_patch_px=80)
    model = build_model(cfg, load_pretrained=False, seed=0).eval()
    assert model.patch_origins() == [0, 72, 144]  # 144 + 80 = 224: the last patch ends at the crop's edge
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        v = model.encode_image(x)
        by_hand = torch.stack([model.visual(x[:, :, y:y + 80, z:z + 80]) for y in (0, 72, 144)
                               for z in (0, 72, 144)]).mean(dim=0)
        whole = build_model(load_preset("effnet-lite0"), load_pretrained=False, seed=0).eval().encode_image(x)
    assert v.shape == (2, cfg.clip_config["embed_dim"])
    assert torch.allclose(v, by_hand, atol=1e-5)
    assert not torch.allclose(v, whole, atol=1e-3)
    # a change confined to one corner moves the embedding through the patches that contain it only
    y = x.clone()
    y[:, :, :60, :60] += 1.0
    with torch.no_grad():
        moved = model.encode_image(y) - v
        corner = (model.visual(y[:, :, :80, :80]) - model.visual(x[:, :, :80, :80])) / 9
    assert torch.allclose(moved, corner, atol=1e-5)


def test_image_patches_are_validated():
    with pytest.raises(MfclipError, match="image patches"):
        load_preset("effnet-lite0").with_overrides(image_patches=3, image_patch_px=300)
    with pytest.raises(MfclipError, match="convolutional image tower"):
        build_model(load_preset("tiny").with_overrides(image_patches=2), seed=0)


# --- autoencoder reconstructions -------------------------------------------------------------------------
def test_pseudo_fake_kinds_parse_plus_joined_names():
    from mfclip_cli.train import pseudo_fake_kinds

    assert pseudo_fake_kinds("none") == ()
    assert pseudo_fake_kinds("sbi+swap+ae") == ("sbi", "swap", "ae")
    assert pseudo_fake_kinds("sbi-soft+swap") == ("sbi-soft", "swap")
    for bad in ("sbi+sbi", "gan", "sbi+", "", "sbi+sbi-soft"):
        with pytest.raises(MfclipError, match="pseudo-fakes"):
            pseudo_fake_kinds(bad)


def test_autoencoder_learns_saves_and_reconstructs_at_any_size(read_crop, face_paths, tmp_path):
    from mfclip_cli.data.autoencoder import load_autoencoder, reconstruct, save_autoencoder, train_autoencoder

    crops = [read_crop(p) for p in face_paths["real/london_faceset"][:4]]
    losses: list[float] = []
    model = train_autoencoder([(lambda c=c: c) for c in crops], steps=40, batch=8, patch=32, seed=0,
                              on_step=lambda step, loss: losses.append(loss))
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    out = reconstruct(model, crops[0][:222, :219])  # not a multiple of 4: padded inside, cut back
    assert out.shape == (222, 219, 3) and out.dtype == np.uint8
    psnr = 10 * np.log10(255 ** 2 / np.mean((out.astype(float) - crops[0][:222, :219]) ** 2))
    assert psnr > 20  # a reconstruction, not noise: the pooled image carries colour and layout
    save_autoencoder(model, tmp_path / "ae.safetensors")
    assert np.array_equal(reconstruct(load_autoencoder(tmp_path / "ae.safetensors"), crops[1]),
                          reconstruct(model, crops[1]))


def test_reconstructed_entries_are_fake_copies_of_a_quarter_of_the_reals():
    from mfclip_cli.train import reconstructed_entries

    reals = [_entry(0, "src", i) for i in range(40)]
    ae = reconstructed_entries(reals, seed=0)
    assert len(ae) == 10 and all(e.record.y == 1 and e.record.label.generator == "autoencoder" for e in ae)
    assert reconstructed_entries(reals, seed=0) == ae
