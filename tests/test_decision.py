"""The decision rule: a score at the threshold is fake, the band makes "uncertain", CLI flags beat the
checkpoint, and thresholds are chosen at the EER point or a target false-positive rate."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import separable_ish

from mfclip_cli import decision as D
from mfclip_cli.faces.types import CropPolicy


def test_a_score_exactly_at_the_threshold_is_fake():
    assert D.is_fake(0.5, 0.5)
    assert not D.is_fake(np.nextafter(0.5, 0.0), 0.5)
    assert D.decide(0.5, 0.5) == "fake"
    assert D.decide(0.4999, 0.5) == "real"


def test_is_fake_works_elementwise_on_arrays():
    flags = D.is_fake(np.array([0.1, 0.5, 0.9]), 0.5)
    assert flags.tolist() == [False, True, True]


@pytest.mark.parametrize(
    "score, band, verdict",
    [(0.5, 0.0, "fake"), (0.49, 0.0, "real"), (0.52, 0.05, "uncertain"), (0.46, 0.05, "uncertain"),
     (0.55, 0.05, "fake"), (0.44, 0.05, "real"), (0.9, 0.05, "fake")],
)  # fmt: skip
def test_decide_with_uncertain_band(score, band, verdict):
    assert D.decide(score, 0.5, band) == verdict


def test_a_negative_band_is_refused():
    with pytest.raises(ValueError, match="uncertain_band"):
        D.decide(0.5, 0.5, -0.1)


def test_resolve_inference_keeps_the_checkpoint_values_when_no_flag_is_given():
    crop = CropPolicy(detector="retinaface", min_face=20)
    chosen = D.resolve_inference(0.31, crop)
    assert chosen.threshold == 0.31 and chosen.crop == crop


def test_resolve_inference_cli_flags_beat_the_checkpoint():
    crop = CropPolicy(detector="retinaface", min_face=20, margin=0.3)
    chosen = D.resolve_inference(0.31, crop, cli_threshold=0.0, min_face=0, detector="haar")
    assert chosen.threshold == 0.0  # a falsy flag is still given
    assert chosen.crop == CropPolicy(detector="haar", min_face=0, margin=0.3)


def test_override_crop_validates_the_result():
    from mfclip_cli.errors import MfclipError

    with pytest.raises(MfclipError, match="Valid:"):
        D.override_crop(CropPolicy(), detector="nope")


def test_choose_threshold_eer_returns_the_eer_threshold():
    s, y = separable_ish(5)
    thr, info = D.choose_threshold(s, y, "eer")
    assert info.method == "eer" and info.value == thr
    assert (info.eer, thr) == D.equal_error_rate(s, y)


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.1, 0.5, 1.0])
def test_choose_threshold_target_fpr_keeps_real_fpr_under_target(target):
    s, y = separable_ish(6)
    real = s[y == 0]
    thr, info = D.choose_threshold(s, y, "target_fpr", target_fpr=target)
    fpr = np.mean(real >= thr)
    assert fpr <= target + 1e-12
    assert info.fpr == pytest.approx(fpr)
    # lowest such threshold: the next lower distinct score would exceed the target
    lower = s[s < thr]
    if lower.size:
        assert np.mean(real >= lower.max()) > target


def test_choose_threshold_lower_target_means_higher_threshold_and_works_on_reals_only():
    s, y = separable_ish(8)
    t_strict, _ = D.choose_threshold(s, y, "target_fpr", target_fpr=0.01)
    t_loose, _ = D.choose_threshold(s, y, "target_fpr", target_fpr=0.2)
    assert t_strict > t_loose
    thr, info = D.choose_threshold(s[y == 0], y[y == 0], "target_fpr", target_fpr=0.1)
    assert info.tpr is None and np.mean(s[y == 0] >= thr) <= 0.1


def test_choose_threshold_rejects_unknown_method_and_missing_target():
    with pytest.raises(ValueError, match="valid: eer, target_fpr"):
        D.choose_threshold([0.1, 0.9], [0, 1], "youden")
    with pytest.raises(ValueError, match="target_fpr"):
        D.choose_threshold([0.1, 0.9], [0, 1], "target_fpr")
    with pytest.raises(ValueError, match="both"):
        D.choose_threshold([0.1, 0.9], [1, 1], "eer")


def test_per_source_target_fpr_holds_for_every_real_source_where_pooled_does_not():
    rng = np.random.default_rng(3)
    easy, hard = rng.uniform(0.0, 0.4, 400), rng.uniform(0.2, 0.9, 40)  # a small real source scored high
    fake = rng.uniform(0.5, 1.0, 300)
    s = np.concatenate([easy, hard, fake])
    y = np.array([0] * 440 + [1] * 300)
    src = ["studio"] * 400 + ["celebs"] * 40 + ["sd"] * 300

    pooled, _ = D.choose_threshold(s, y, "target_fpr", target_fpr=0.05)
    thr, info = D.choose_threshold(s, y, "target_fpr_per_source", target_fpr=0.05, sources=src)

    assert np.mean(D.is_fake(hard, pooled)) > 0.05  # the pooled rule flags the small source far more
    for reals in (easy, hard):
        assert np.mean(D.is_fake(reals, thr)) <= 0.05
    assert np.mean(D.is_fake(hard, hard[hard < thr].max())) > 0.05  # the lowest such threshold
    assert thr > pooled
    assert info.method == "target_fpr_per_source" and info.extra["binding_source"] == "celebs"
    assert info.fpr == pytest.approx(np.mean(D.is_fake(s[y == 0], thr)))
    assert info.tpr == pytest.approx(np.mean(D.is_fake(fake, thr)))
    assert D.ThresholdRecord.from_json(info.to_json()) == info


def test_per_source_target_fpr_needs_a_source_per_score():
    with pytest.raises(ValueError, match="source name per score"):
        D.choose_threshold([0.1, 0.9], [0, 1], "target_fpr_per_source", target_fpr=0.05, sources=["a"])
