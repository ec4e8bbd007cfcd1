"""faces/: detectors (RetinaFace ONNX, Haar, insightface packs), alignment and the shared crop function."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import FACES_DIR

from mfclip_cli.errors import MfclipError
from mfclip_cli.faces import (
    ARCFACE_TEMPLATE_112,
    CropPolicy,
    Face,
    align_crop,
    crop_faces,
    crop_transform,
    make_detector,
    template_in_crop,
)
from mfclip_cli.media import decode_image

REAL = FACES_DIR / "real"
PHOTOS = [REAL / "unsplash_man512" / f"man_unsplash_0000{i}.jpg" for i in range(3)]

pytestmark = pytest.mark.skipif(not all(p.is_file() for p in PHOTOS), reason="shared face photos not present")


def _insightface_image(name: str) -> Path:
    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        pytest.skip("insightface (optional; in uv's dev group) is not installed: its sample image is missing")
    return Path(spec.origin).parent / "data" / "images" / name


@pytest.fixture(scope="module")
def retina():
    return make_detector("retinaface")


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [decode_image(p) for p in PHOTOS]


def _center(box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


# ----------------------------------------------------------------------------------------- RetinaFace


def test_retinaface_finds_a_confident_face_with_plausible_landmarks(retina, photos):
    for faces in retina.detect(photos):
        best = faces[0]
        assert best.score > 0.9
        assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
        assert best.landmarks is not None and len(best.landmarks) == 5
        x1, y1, x2, y2 = best.box
        for x, y in best.landmarks:
            assert x1 - 2 <= x <= x2 + 2 and y1 - 2 <= y <= y2 + 2
        (lex, ley), (rex, rey), _, (lmx, lmy), (rmx, rmy) = best.landmarks
        assert max(ley, rey) < min(lmy, rmy)  # eyes above the mouth
        assert lex < rex and lmx < rmx  # left/right in image order


def test_retinaface_finds_every_face_in_a_group_photo(retina):
    image = decode_image(_insightface_image("t1.jpg"))
    faces = [f for f in retina.detect([image])[0] if f.score >= 0.7]
    # The six people in t1.jpg, counted by eye (approximate face centres in the 1280x886 image).
    expected = np.array([[110, 330], [324, 213], [519, 335], [792, 407], [956, 128], [1177, 337]])
    assert len(faces) == len(expected)
    centres = np.array([_center(f.box) for f in faces])
    for e in expected:
        assert np.min(np.linalg.norm(centres - e, axis=1)) < 40


def test_batched_detection_equals_one_by_one(retina, photos):
    images = [
        cv2.resize(photos[0], (300, 300)),
        cv2.resize(photos[1], (320, 290)),
        cv2.resize(photos[2], (310, 310)),
    ]
    assert len(retina._plan_batches([im.shape[:2] for im in images])) == 1  # really padded into one batch
    batched = retina.detect(images)
    for image, faces in zip(images, batched):
        single = retina.detect([image])[0]
        assert len(single) == len(faces)
        for a, b in zip(single, faces):
            assert np.allclose(a.box, b.box, atol=1.0)
            assert abs(a.score - b.score) < 0.01


def test_large_images_are_downscaled_and_mapped_back(retina, photos):
    small = retina.detect([photos[0]])[0][0]
    big = retina.detect([cv2.resize(photos[0], (1024, 1024), interpolation=cv2.INTER_CUBIC)])[0][0]
    assert np.allclose(np.array(big.box) / 2, small.box, atol=6)


@pytest.mark.parametrize("factor", [1.37, 2.93, 5.87])
def test_downscaled_detection_maps_landmarks_back_at_any_factor(retina, photos, factor):
    """Halvings + bilinear (odd sides drop a row per halving): points still land on the face."""
    image = photos[1]
    h, w = image.shape[:2]
    size = (round(w * factor) | 1, round(h * factor) | 1)  # odd sides
    big = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    seen, sx, sy = retina._prepare(big)
    assert max(seen.shape[:2]) == retina.max_side
    assert sx == pytest.approx(seen.shape[1] / size[0], rel=0.01) and sy == pytest.approx(seen.shape[0] / size[1], rel=0.01)
    ref = retina.detect([image])[0][0]
    got = retina.detect([big])[0][0]
    pts = np.array(got.landmarks) / [size[0] / w, size[1] / h]
    eyes = np.linalg.norm(np.subtract(ref.landmarks[0], ref.landmarks[1]))
    assert np.abs(pts - np.array(ref.landmarks)).max() < 0.1 * eyes


def test_detection_on_blank_image_is_empty(retina):
    assert retina.detect([np.full((128, 160, 3), 127, np.uint8)]) == [[]]


# ----------------------------------------------------------------------------------------- crops


def test_align_crop_puts_the_eyes_on_the_template(retina, photos):
    policy = CropPolicy(size=224, margin=0.25)
    target = template_in_crop(policy)
    for image in photos:
        face = retina.detect([image])[0][0]
        crop = align_crop(image, face, policy)
        assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
        m = crop_transform(face, policy)
        eyes = np.asarray(face.landmarks[:2]) @ m[:, :2].T + m[:, 2]
        # A least-squares fit of 5 points: the eye midpoint lands on the template's, the eye line is level
        # (individual points deviate with head pose).
        assert np.linalg.norm(eyes.mean(axis=0) - target[:2].mean(axis=0)) < 8
        dx, dy = eyes[1] - eyes[0]
        assert abs(np.degrees(np.arctan2(dy, dx))) < 10


def test_align_crop_maps_template_shaped_landmarks_exactly():
    # Landmarks that are the template rotated by 20 degrees, scaled 2.5x and shifted: alignment must undo it.
    policy = CropPolicy(size=224, margin=0.25)
    a = np.radians(20)
    rot = 2.5 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    points = ARCFACE_TEMPLATE_112 @ rot.T + [300, 150]
    image = np.zeros((600, 700, 3), np.uint8)
    for x, y in points:
        cv2.circle(image, (round(x), round(y)), 6, (255, 255, 255), -1)
    face = Face(box=(200, 100, 500, 450), score=1.0, landmarks=tuple(map(tuple, points)))
    m = crop_transform(face, policy)
    target = template_in_crop(policy)
    assert np.allclose(points @ m[:, :2].T + m[:, 2], target, atol=1e-6)
    crop = align_crop(image, face, policy)
    for x, y in target:  # each drawn dot lands on its template position
        assert crop[round(y), round(x)].min() > 200


def test_box_crop_without_landmarks_is_square_and_padded(photos):
    policy = CropPolicy(size=128, margin=0.5, align=False)
    face = Face(box=(-20.0, -20.0, 80.0, 60.0), score=1.0)  # partly outside the image
    crop = align_crop(photos[0], face, policy)
    assert crop.shape == (128, 128, 3)
    assert (crop[:10, :10] == 0).all()  # outside the image is black


def test_crop_faces_filters_and_orders(retina, photos):
    big_and_small = np.zeros((400, 800, 3), np.uint8)
    big_and_small[:, :400] = cv2.resize(photos[0], (400, 400))
    big_and_small[100:300, 500:700] = cv2.resize(photos[1], (200, 200))
    crops = crop_faces(big_and_small, retina, CropPolicy(size=112))
    assert len(crops) == 2
    assert crops[0][0].area > crops[1][0].area
    assert all(c.shape == (112, 112, 3) for _, c in crops)
    assert len(crop_faces(big_and_small, retina, CropPolicy(size=112), max_faces=1)) == 1
    assert crop_faces(big_and_small, retina, CropPolicy(size=112, min_face=250)) == []


def test_policy_none_resizes_the_whole_image_without_a_detector(photos):
    [(face, crop)] = crop_faces(photos[0], None, CropPolicy.none(96))
    h, w = photos[0].shape[:2]
    assert face.box == (0.0, 0.0, float(w), float(h)) and crop.shape == (96, 96, 3)


def test_crop_policy_round_trips_and_rejects_unknowns():
    policy = CropPolicy(detector="haar", size=256, margin=0.4, align=False)
    assert CropPolicy.from_dict(policy.to_dict()) == policy
    assert CropPolicy.from_dict({}) == CropPolicy()
    with pytest.raises(MfclipError, match="colour"):
        CropPolicy.from_dict({"colour": "red"})
    with pytest.raises(MfclipError, match="retinaface, insightface, haar, none"):
        CropPolicy(detector="dlib")


# ----------------------------------------------------------------------------------------- other backends


def test_haar_finds_a_face_on_a_real_photo(retina, photos):
    haar = make_detector("haar")
    faces = haar.detect([photos[0]])[0]
    assert faces and faces[0].landmarks is None and faces[0].score == 1.0
    ref = retina.detect([photos[0]])[0][0]
    assert np.linalg.norm(_center(faces[0].box) - _center(ref.box)) < 0.25 * ref.width


def test_insightface_without_a_model_folder_says_where_to_put_it(tmp_path):
    with pytest.raises(MfclipError) as err:
        make_detector("insightface", root=tmp_path)
    assert str(tmp_path / "models" / "buffalo_l") in str(err.value)
    (tmp_path / "models" / "antelopev2").mkdir(parents=True)
    with pytest.raises(MfclipError, match="det_"):
        make_detector("insightface", root=tmp_path, pack="antelopev2")


def test_unknown_detector_lists_valid_names():
    with pytest.raises(MfclipError, match="retinaface, insightface, haar"):
        make_detector("mtcnn")


def test_importing_faces_loads_no_backend():
    code = "import sys, mfclip_cli.faces, mfclip_cli.media; print(sorted({'onnxruntime', 'insightface', 'cv2'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
