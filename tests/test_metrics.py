"""Metrics: agree with sklearn and with brute force, handle degenerate inputs, break down by group."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import separable_ish
from sklearn.metrics import average_precision_score, roc_auc_score

from mfclip_cli import metrics as M


def brute_force_eer(scores, labels) -> float:
    """min over thresholds t (each distinct score) of max(FPR, FNR), flagging score >= t."""
    real, fake = scores[labels == 0], scores[labels == 1]
    best = 1.0
    for t in np.unique(scores):
        best = min(best, max(np.mean(real >= t), np.mean(fake < t)))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_auc_and_ap_equal_sklearn(seed):
    s, y = separable_ish(seed)
    assert M.roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_eer_matches_brute_force_threshold_scan_within_one_step(seed):
    s, y = separable_ish(seed)
    eer, thr = M.equal_error_rate(s, y)
    step = 1 / min(np.sum(y == 0), np.sum(y == 1))
    # Interpolated EER lies at the crossing, at most one ROC step below the best achievable max(FPR, FNR).
    assert 0 <= brute_force_eer(s, y) - eer <= step + 1e-12
    real, fake = s[y == 0], s[y == 1]
    assert abs(np.mean(real >= thr) - np.mean(fake < thr)) <= step + 1e-12


def test_eer_of_perfect_separation_is_zero():
    eer, thr = M.equal_error_rate([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert eer == 0.0
    assert 0.2 < thr <= 0.8


def test_accuracy_at_threshold_counts_ties_as_fake():
    s = [0.1, 0.5, 0.5, 0.9]
    y = [0, 0, 1, 1]
    assert M.accuracy_at(s, y, 0.5) == 0.75  # the real at exactly 0.5 is flagged
    assert M.accuracy_at(s, y, 0.6) == 0.75
    assert M.accuracy_at(s, y, 0.05) == 0.5


def test_binary_metrics_fields_and_class_accuracies():
    m = M.binary_metrics([0.1, 0.4, 0.6, 0.3, 0.8], [0, 0, 0, 1, 1], threshold=0.5)
    assert (m.n, m.n_real, m.n_fake) == (5, 3, 2)
    assert m.real_acc == pytest.approx(2 / 3)
    assert m.fake_acc == 0.5
    assert m.acc == pytest.approx(3 / 5)
    assert m.auc == pytest.approx(roc_auc_score([0, 0, 0, 1, 1], [0.1, 0.4, 0.6, 0.3, 0.8]))
    assert m.auc_ci is None and m.threshold == 0.5


def test_bootstrap_ci_contains_point_auc_and_is_deterministic():
    s, y = separable_ish(7, 200, 150)
    auc = M.roc_auc(s, y)
    ci = M.bootstrap_auc_ci(s, y, n=300, seed=11)
    assert ci[0] < auc < ci[1]
    assert ci == M.bootstrap_auc_ci(s, y, n=300, seed=11)
    assert ci != M.bootstrap_auc_ci(s, y, n=300, seed=12)
    assert M.binary_metrics(s, y, 0.5, bootstrap=300, seed=11).auc_ci == ci


def test_fast_bootstrap_auc_equals_sklearn_with_sample_weights():
    s, y = separable_ish(3, 40, 30)
    s = np.round(s, 1)  # many ties
    rng = np.random.default_rng(0)
    w = rng.integers(0, 4, s.size).astype(float)
    w[np.flatnonzero(y == 0)[0]] = w[np.flatnonzero(y == 1)[0]] = 1.0
    auc_of = M._weighted_auc_factory(s, y)
    assert auc_of(w[y == 0], w[y == 1]) == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)


def test_single_class_gives_none_not_nan_and_serialises():
    m = M.binary_metrics([0.2, 0.7, 0.9], [1, 1, 1], threshold=0.5, bootstrap=50)
    assert m.auc is None and m.ap is None and m.eer is None and m.eer_threshold is None
    assert m.auc_ci is None and m.real_acc is None
    assert m.fake_acc == pytest.approx(2 / 3)
    json.dumps(m.to_dict(), allow_nan=False)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="length"):
        M.roc_auc([0.1, 0.2], [0])
    with pytest.raises(ValueError, match="labels"):
        M.roc_auc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        M.roc_auc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        M.binary_metrics([], [], 0.5)


def test_video_level_means_frames_per_video_in_first_seen_order():
    scores = [0.2, 0.9, 0.4, 0.7, 0.5]
    labels = [0, 1, 0, 1, 1]
    groups = ["v_real", "v_fake", "v_real", "v_fake", "v_fake2"]
    s, y, ids = M.video_level(scores, labels, groups)
    assert ids == ["v_real", "v_fake", "v_fake2"]
    np.testing.assert_allclose(s, [0.3, 0.8, 0.5])
    np.testing.assert_array_equal(y, [0, 1, 1])


def test_video_level_refuses_a_group_with_mixed_labels():
    with pytest.raises(ValueError, match="mix real and fake.*'v1'"):
        M.video_level([0.1, 0.9], [0, 1], ["v1", "v1"])


def test_breakdown_compares_each_fake_group_with_all_reals():
    s = [0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.6, 0.95]
    y = [0, 0, 0, 1, 1, 1, 1, 1]
    attrs = {
        "generator": ["real", "real", "real", "ddpm", "ddpm", "stylegan", "ldm", "ldm"],
        "kind": ["real", "real", "real", "entire_synthesis", "entire_synthesis", "entire_synthesis",
                 "face_swap", "face_swap"],
    }  # fmt: skip
    rows = M.breakdown(s, y, attrs, threshold=0.5)
    names = [(r.group_by, r.name) for r in rows]
    assert names == [
        ("all", "all"),
        ("generator", "ddpm"), ("generator", "ldm"), ("generator", "stylegan"),
        ("kind", "entire_synthesis"), ("kind", "face_swap"),
    ]  # fmt: skip
    counts = {(r.group_by, r.name): (r.metrics.n_real, r.metrics.n_fake) for r in rows}
    assert counts[("all", "all")] == (3, 5)
    assert counts[("generator", "ddpm")] == (3, 2)
    assert counts[("generator", "stylegan")] == (3, 1)
    assert counts[("kind", "entire_synthesis")] == (3, 3)
    assert all(r.metrics.n_real == 3 for r in rows)
    d = rows[1].to_dict()
    assert d["name"] == "ddpm" and d["group_by"] == "generator" and d["auc"] == 1.0


def test_breakdown_refuses_attribute_of_wrong_length():
    with pytest.raises(ValueError, match="'kind' has 1 values for 2 samples"):
        M.breakdown([0.1, 0.9], [0, 1], {"kind": ["x"]}, 0.5)
