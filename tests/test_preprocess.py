"""Model inputs: grey quantisation, GLCM homogeneity vs scikit-image, richest patch, prepare_batch (SPEC §3.1-2)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.feature import graycomatrix, graycoprops

from mfclip_cli.model.config import load_preset
from mfclip_cli.model.preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    PreprocessConfig,
    face_mask,
    grey_levels,
    patch_homogeneity,
    prepare_batch,
    select_richest_patch,
)


def skimage_homogeneity(grey: np.ndarray, grid: int) -> np.ndarray:
    """Reference: skimage GLCM homogeneity per patch, patches top-left anchored, remainder rows/cols dropped."""
    ph, pw = grey.shape[0] // grid, grey.shape[1] // grid
    values = []
    for r in range(grid):
        for c in range(grid):
            patch = grey[r * ph : (r + 1) * ph, c * pw : (c + 1) * pw]
            glcm = graycomatrix(patch, [1], [0], levels=256, symmetric=True, normed=True)
            values.append(graycoprops(glcm, "homogeneity")[0, 0])
    return np.array(values)


def random_crops(size: int, n: int = 12) -> list[tuple[str, np.ndarray]]:
    """Uniform noise images, and smooth images whose noise amplitude differs per block (a clear argmin)."""
    rng = np.random.default_rng(1234)
    out = []
    for i in range(n):
        if i % 3 == 0:
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        else:
            base = cv2.resize(rng.uniform(0, 255, (6, 6, 3)).astype(np.float32), (size, size),
                              interpolation=cv2.INTER_CUBIC)
            amp = cv2.resize(rng.uniform(0, 40, (4, 4)).astype(np.float32), (size, size),
                             interpolation=cv2.INTER_NEAREST)
            noisy = base + amp[..., None] * rng.standard_normal((size, size, 3)).astype(np.float32)
            img = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        out.append((f"random{i}", img))
    return out


def photo_crops(face_paths, read_crop, size: int) -> list[tuple[str, np.ndarray]]:
    """Two real photos per real source and two fakes per generator, resized with INTER_AREA."""
    out = []
    for folder, files in face_paths.items():
        for path in (files[0], files[len(files) // 2]):
            out.append((f"{folder}/{path.name}", read_crop(path, size)))
    return out


def test_grey_levels_uses_the_spec_weights_and_rounds_to_nearest():
    pure = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    # 0.2989*255 = 76.22, 0.587*255 = 149.69, 0.114*255 = 29.07, sum of weights 0.9999 -> 254.97
    assert grey_levels(pure).tolist() == [[255, 0, 76, 150, 29]]
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    exact = img.astype(np.float64) @ np.array([0.2989, 0.587, 0.114])
    grey = grey_levels(img)
    assert grey.dtype == np.uint8
    assert np.abs(grey - exact).max() <= 0.5 + 1e-4


@pytest.mark.parametrize(("grid", "size"), [(2, 224), (3, 224), (3, 225)])
def test_homogeneity_and_richest_patch_match_skimage(face_paths, read_crop, grid, size):
    crops = random_crops(size) + photo_crops(face_paths, read_crop, size)
    assert len(crops) >= 20
    assert sum(name.startswith("fake/") for name, _ in crops) >= 4
    for name, crop in crops:
        grey = grey_levels(crop)
        ours = patch_homogeneity(grey, grid)
        ref = skimage_homogeneity(grey, grid)
        assert ours.shape == (grid * grid,)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9, err_msg=name)
        assert select_richest_patch(crop, grid) == int(np.argmin(ref)), name


def test_remainder_rows_and_columns_are_ignored_for_a_3x3_grid_of_224():
    rng = np.random.default_rng(5)
    crop = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    before = patch_homogeneity(grey_levels(crop), 3)
    changed = crop.copy()
    changed[222:, :] = 255  # 224 = 3 * 74 + 2: the last two rows/columns belong to no patch
    changed[:, 222:] = 0
    np.testing.assert_array_equal(patch_homogeneity(grey_levels(changed), 3), before)
    changed[221, 0] = 255 - changed[221, 0]  # last row of patch row 2 does count
    assert patch_homogeneity(grey_levels(changed), 3)[6] != before[6]


@pytest.mark.parametrize("grid", [2, 3])
def test_the_only_textured_patch_is_the_richest(grid):
    rng = np.random.default_rng(grid)
    size = 224
    p = size // grid
    for index in range(grid * grid):
        crop = np.full((size, size, 3), 128, np.uint8)
        r, c = divmod(index, grid)
        crop[r * p : (r + 1) * p, c * p : (c + 1) * p] = rng.integers(0, 256, (p, p, 3), dtype=np.uint8)
        assert select_richest_patch(crop, grid) == index
        h = patch_homogeneity(grey_levels(crop), grid)
        assert np.delete(h, index).tolist() == [1.0] * (grid * grid - 1)  # flat patches: H = 1 exactly
        assert h[index] < 0.1


def test_prepare_batch_shapes_dtypes_normalisation_and_noise_patch(face_paths, read_crop):
    cfg = PreprocessConfig()
    files = [face_paths[k][3] for k in sorted(face_paths)][:4]
    crops = [read_crop(f) for f in files]
    known = np.full((224, 224, 3), 90, np.uint8)  # only the bottom-left quadrant (index 2) has texture
    known[112:, :112] = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    crops.append(known)

    image, noise = prepare_batch(crops, cfg)
    b = len(crops)
    assert image.shape == (b, 3, 224, 224) and image.dtype == np.float32 and image.flags.c_contiguous
    assert noise.shape == (b, 3, 112, 112) and noise.dtype == np.float32 and noise.flags.c_contiguous

    mean = np.array(OPENAI_CLIP_MEAN, np.float32)[:, None, None]
    std = np.array(OPENAI_CLIP_STD, np.float32)[:, None, None]
    for i, crop in enumerate(crops):
        rgb01 = crop.transpose(2, 0, 1).astype(np.float32) / 255.0
        np.testing.assert_allclose(image[i], (rgb01 - mean) / std, rtol=0, atol=1e-5)
        np.testing.assert_allclose(image[i] * std + mean, rgb01, rtol=0, atol=1e-6)
        r, c = divmod(select_richest_patch(crop, 2), 2)
        region = crop[r * 112 : (r + 1) * 112, c * 112 : (c + 1) * 112]
        np.testing.assert_array_equal(noise[i], region.transpose(2, 0, 1).astype(np.float32) / 255.0)
    assert select_richest_patch(known, 2) == 2
    np.testing.assert_array_equal(noise[-1], known[112:, :112].transpose(2, 0, 1) / np.float32(255.0))
    assert 0.0 <= noise.min() and noise.max() <= 1.0


def test_prepare_batch_follows_the_checkpoint_preprocess_config():
    eff = load_preset("effnet-lite0").preprocess  # mean = std = 0.5 -> [-1, 1]
    crop = np.zeros((224, 224, 3), np.uint8)
    crop[:, 112:] = 255
    image, _ = prepare_batch([crop], eff)
    assert image.min() == -1.0 and image.max() == 1.0

    cfg3 = PreprocessConfig(size=225, grid=3)
    rng = np.random.default_rng(9)
    crop = rng.integers(0, 256, (225, 225, 3), dtype=np.uint8)
    _, noise = prepare_batch([crop], cfg3)
    assert noise.shape == (1, 3, 75, 75)
    r, c = divmod(select_richest_patch(crop, 3), 3)
    np.testing.assert_array_equal(noise[0] * 255.0, crop[r * 75 : (r + 1) * 75, c * 75 : (c + 1) * 75].transpose(2, 0, 1))


def test_ellipse_mask_blanks_the_frame_in_both_inputs():
    cfg = PreprocessConfig(mask="ellipse")
    rng = np.random.default_rng(4)
    crop = rng.integers(1, 256, (224, 224, 3), dtype=np.uint8)
    image, noise = prepare_batch([crop], cfg)
    blank = -np.array(OPENAI_CLIP_MEAN, np.float32) / np.array(OPENAI_CLIP_STD, np.float32)
    np.testing.assert_allclose(image[0, :, 0, 0], blank, atol=1e-6)  # corner: outside the face ellipse
    np.testing.assert_allclose(image[0, :, 112, 112] * np.array(OPENAI_CLIP_STD) + np.array(OPENAI_CLIP_MEAN),
                               crop[112, 112] / 255.0, atol=1e-6)  # centre: kept
    masked = np.where(face_mask(224, "ellipse")[..., None], crop, 0).astype(np.uint8)
    r, c = divmod(select_richest_patch(masked, 2), 2)
    np.testing.assert_array_equal(noise[0] * 255.0, masked[r * 112 : (r + 1) * 112, c * 112 : (c + 1) * 112]
                                  .transpose(2, 0, 1).astype(np.float32))
    outer = noise[0, :, -1 if r else 0, -1 if c else 0]  # the patch's corner that is a corner of the crop
    assert outer.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="ellipse"):
        PreprocessConfig(mask="circle")


def test_prepare_batch_rejects_bad_crops():
    cfg = PreprocessConfig()
    with pytest.raises(ValueError, match="at least one crop"):
        prepare_batch([], cfg)
    with pytest.raises(ValueError, match="uint8 224x224x3"):
        prepare_batch([np.zeros((200, 224, 3), np.uint8)], cfg)
    with pytest.raises(ValueError, match="uint8 224x224x3"):
        prepare_batch([np.zeros((224, 224, 3), np.float32)], cfg)
