"""`mfclip eval`: per-generator rows, robustness, plots, JSON, overlap guard, calibration, skipped files, CLI,
`--suite` (one row per set, summary over the scorable sets)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from mfclip_cli.data.transforms import PERTURBATIONS
from mfclip_cli.errors import MfclipError
from mfclip_cli.evaluate import SCHEMA_ID, EvalOptions, run_eval
from mfclip_cli.report.eval import render_eval, write_eval_files

GENERATORS = ("ddpm", "stylegan2")


def _real(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth noise: low-resolution noise upsampled bilinearly."""
    small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def _fake(rng: np.random.Generator, size: int) -> np.ndarray:
    """Blocky noise: noise upsampled 2x nearest (the kind of trace the noise branch reads)."""
    small = rng.integers(0, 256, (size // 2, size // 2, 3), dtype=np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_NEAREST)


def make_dataset(root: Path, seed: int, n: int = 12, size: int = 64) -> Path:
    """Generic tree: real/ffhq (2n images) and fake/entire_synthesis/<gen> (n each), distinct per seed."""
    rng = np.random.default_rng(seed)
    folders = [(root / "real" / "ffhq", _real, 2 * n)]
    folders += [(root / "fake" / "entire_synthesis" / g, _fake, n) for g in GENERATORS]
    for folder, draw, count in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            cv2.imwrite(str(folder / f"{seed}_{i:03d}.png"), draw(rng, size))
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny trained checkpoint, its training data, and a disjoint data set; crops cached in a temp dir."""
    import torch

    from mfclip_cli.train import TrainOptions, run_training

    base = tmp_path_factory.mktemp("eval")
    threads = torch.get_num_threads()
    # one intra-op thread: these models are tiny, and on a busy 2-core machine OpenMP threads spin-wait
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MFCLIP_CACHE", str(base / "cache"))
        train_root = make_dataset(base / "train_data", seed=1)
        fresh_root = make_dataset(base / "fresh_data", seed=2, n=6)
        [result] = run_training(TrainOptions(
            data=str(train_root), out=str(base / "run"), preset="tiny", crop="none", epochs=2, max_steps=3,
            batch_size=8, workers=0, protocol="in-domain")).runs
        yield {"base": base, "ckpt": result.best_checkpoint, "train": train_root, "fresh": fresh_root}
    torch.set_num_threads(threads)


def _opts(env, data: Path, **kw) -> EvalOptions:
    return EvalOptions(checkpoint=env["ckpt"], data=str(data), workers=0, batch_size=16, device="cpu", **kw)


def test_eval_reports_per_generator_rows_robustness_plots_and_json(env, tmp_path):
    out = tmp_path / "eval.json"
    result = write_eval_files(run_eval(_opts(env, env["fresh"], robustness=True, bootstrap=20, strict=True)),
                              json_out=str(out), plots=str(tmp_path / "plots"))
    [rep] = result.sets
    names = [r.name for r in rep.rows]
    assert names[0] == "all" and set(GENERATORS) <= set(names)
    assert rep.row("ddpm").metrics.n_fake == 6 and rep.row("ddpm").metrics.n_real == 12
    assert rep.row("all").metrics.auc_ci is not None
    assert [r.name for r in result.robustness] == [f"robustness:{p}" for p in PERTURBATIONS]
    assert all(r.metrics.n == 24 for r in result.robustness)

    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert {p.name for p in pngs} == {"all_roc.png", "all_det.png", "all_hist.png"}
    assert all(p.stat().st_size > 1000 for p in pngs)

    doc = json.loads(out.read_text())
    assert doc["schema"] == SCHEMA_ID
    assert doc["checkpoint"]["sha256"] == result.checkpoint_sha256 and len(doc["checkpoint"]["sha256"]) == 64
    assert len(doc["data"]["manifest_sha256"]) == 64
    assert doc["overlap"] == 0  # a fresh data set shares no file with the training data (strict passed)
    assert {r["name"] for r in doc["sets"][0]["rows"]} >= {"all", *GENERATORS}
    assert len(doc["robustness"]) == len(PERTURBATIONS)

    from rich.console import Console

    console = Console(record=True, width=160)
    render_eval(result, console)
    text = console.export_text()
    assert "stylegan2" in text and "jpeg70" in text


def test_standardize_reencodes_every_crop_after_the_perturbation():
    from mfclip_cli.data.transforms import gaussian_blur, standardize
    from mfclip_cli.evaluate import crop_pipeline

    img = _fake(np.random.default_rng(0), 64)
    assert crop_pipeline(None, False) is None
    np.testing.assert_array_equal(crop_pipeline(None, True)(img), standardize(img, size=None, quality=90))
    np.testing.assert_array_equal(crop_pipeline("blur1", True)(img),
                                  standardize(gaussian_blur(img, 1.0), size=None, quality=90))


def test_standardize_scores_every_file(env):
    result = run_eval(_opts(env, env["fresh"], standardize=True))
    assert result.sets[0].row("all").metrics.n == 24
    assert any("standardize" in n for n in result.notes)


def test_overlap_guard_flags_training_files_and_strict_refuses(env):
    result = run_eval(_opts(env, env["train"]))
    assert result.overlap and result.overlap > 0
    assert result.overlap_warning and "optimistic" in result.overlap_warning

    from rich.console import Console

    console = Console(record=True, width=200)
    render_eval(result, console)
    assert "WARNING" in console.export_text()

    with pytest.raises(MfclipError, match="--strict"):
        run_eval(_opts(env, env["train"], strict=True))


def test_split_test_of_the_training_data_does_not_overlap(env):
    result = run_eval(_opts(env, env["train"], split="test", strict=True))
    assert result.overlap == 0
    assert result.sets[0].name == "split:test"


def test_split_test_follows_the_test_share_recorded_in_the_checkpoint(env):
    from mfclip_cli.data.layouts import read_dataset
    from mfclip_cli.evaluate import select_sets
    from mfclip_cli.model.metadata import CheckpointMeta, TrainingRecord

    records = read_dataset(env["train"])
    opts = _opts(env, env["train"], split="test")
    sizes = {}
    for frac in (0.2, 0.5):
        recorded = CheckpointMeta(training=TrainingRecord(val_frac=0.1, test_frac=frac))
        sets, notes = select_sets(opts, records, recorded)
        sizes[frac] = len(sets["split:test"])
        assert f"test {frac:g}" in notes[0]
    assert 0 < sizes[0.2] < sizes[0.5] < len(records)
    # an explicit --test-frac wins over the record; no record means train's default 0.2
    sets, _ = select_sets(replace(opts, test_frac=0.5), records,
                          CheckpointMeta(training=TrainingRecord(test_frac=0.2)))
    assert len(sets["split:test"]) == sizes[0.5]
    sets, _ = select_sets(opts, records, CheckpointMeta())
    assert len(sets["split:test"]) == sizes[0.2]


def test_protocol_as_trained_evaluates_the_runs_test_set(env):
    result = run_eval(_opts(env, env["train"], protocol="in-domain", strict=True))
    assert [s.name for s in result.sets] == ["in-domain"] and result.overlap == 0
    trained = json.loads((Path(env["ckpt"]).parent / "test_metrics.json").read_text())["in-domain"]
    assert result.sets[0].row("all").metrics.n == trained["rows"][0]["n"]


def test_calibrate_writes_a_checkpoint_with_target_fpr_threshold(env, tmp_path):
    from mfclip_cli.model.checkpoint import read_checkpoint_meta

    calib = make_dataset(tmp_path / "calib", seed=3, n=5)
    out = tmp_path / "cal.safetensors"
    result = run_eval(_opts(env, env["fresh"], calibrate=str(calib), target_fpr=0.1, calibrated_out=str(out)))
    meta = read_checkpoint_meta(out)
    old = read_checkpoint_meta(env["ckpt"])
    assert meta.threshold.method == "target_fpr"
    assert meta.threshold.data == str(calib)
    assert meta.threshold.value == pytest.approx(result.threshold.value)
    assert meta.threshold.previous.value == pytest.approx(old.threshold.value)
    assert meta.training == old.training and "sha256" not in meta.to_json()
    assert result.sets[0].row("all").metrics.threshold == pytest.approx(meta.threshold.value)
    # the new checkpoint flags at most 10% of the calibration reals
    check = run_eval(replace(_opts(env, calib), checkpoint=str(out)))
    assert check.sets[0].row("all").metrics.real_acc >= 0.9


def test_calibrate_per_source_keeps_the_rate_on_every_real_source(env, tmp_path):
    calib = make_dataset(tmp_path / "calib", seed=4, n=6)
    second = make_dataset(tmp_path / "other", seed=5, n=3) / "real" / "ffhq"
    second.rename(calib / "real" / "lfw")
    pooled = run_eval(_opts(env, env["fresh"], calibrate=str(calib), target_fpr=0.1,
                            calibrated_out=str(tmp_path / "pooled.safetensors")))
    per_source = run_eval(_opts(env, env["fresh"], calibrate=str(calib), target_fpr=0.1, fpr_per_source=True,
                                calibrated_out=str(tmp_path / "per_source.safetensors")))

    chosen = per_source.threshold
    assert chosen.method == "target_fpr_per_source" and chosen.extra["n_sources"] == 2
    assert chosen.extra["binding_source"] in {"ffhq", "lfw"}
    assert chosen.value >= pooled.threshold.value
    for src in ("ffhq", "lfw"):  # each real source alone, scored by the calibrated checkpoint
        only = tmp_path / f"only_{src}"
        (only / "real").mkdir(parents=True)
        (calib / "real" / src).rename(only / "real" / src)
        (only / "fake").symlink_to(calib / "fake")
        check = run_eval(replace(_opts(env, only), checkpoint=str(tmp_path / "per_source.safetensors")))
        assert check.sets[0].row("all").metrics.real_acc >= 0.9
        (only / "real" / src).rename(calib / "real" / src)
    with pytest.raises(MfclipError, match="--fpr-per-source needs --target-fpr"):
        run_eval(_opts(env, env["fresh"], calibrate=str(calib), fpr_per_source=True))


def test_default_calibrated_path_is_next_to_the_checkpoint(env, tmp_path):
    import shutil

    ckpt = tmp_path / "model.safetensors"
    shutil.copy(env["ckpt"], ckpt)
    result = run_eval(replace(_opts(env, env["fresh"]), checkpoint=str(ckpt), calibrate=str(env["fresh"])))
    assert result.calibrated_checkpoint["path"] == str(tmp_path / "model.calibrated.safetensors")
    assert result.threshold.method == "eer"
    assert any("calibration data" in w for w in result.warnings)


def test_corrupt_image_is_skipped_and_counted(env, tmp_path):
    import shutil

    root = tmp_path / "with_bad"
    shutil.copytree(env["fresh"], root)
    (root / "fake" / "entire_synthesis" / "ddpm" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    events = []
    result = run_eval(_opts(env, root), on_event=lambda event, payload: events.append(payload))
    assert result.skipped == {"all": 1}
    assert any(e["what"] == "face crops" and e["done"] == e["total"] == 25 for e in events)
    assert result.sets[0].n_skipped == 1
    assert result.skipped_files[0]["path"].endswith("broken.png")
    assert result.sets[0].row("all").metrics.n == 24


def test_option_conflicts_are_errors(env):
    with pytest.raises(MfclipError, match="not both"):
        run_eval(_opts(env, env["fresh"], split="test", protocol="in-domain"))
    with pytest.raises(MfclipError, match="--calibrate"):
        run_eval(_opts(env, env["fresh"], target_fpr=0.1))


def test_cli_eval_writes_json(env, tmp_path):
    from typer.testing import CliRunner

    from mfclip_cli.cli import app

    out = tmp_path / "cli.json"
    res = CliRunner().invoke(app, ["eval", env["ckpt"], "--data", str(env["fresh"]), "--json", str(out),
                                   "--workers", "0", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == SCHEMA_ID and doc["sets"][0]["name"] == "all"
    assert "ddpm" in res.output


# --- eval --suite ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory) -> Path:
    """Four sets: normal (two real sources), one broken file among normal ones, empty, reals only."""
    root = tmp_path_factory.mktemp("suite")
    normal = make_dataset(root / "a_normal", seed=4, n=4)
    rng = np.random.default_rng(40)
    webcam = normal / "real" / "webcam"
    webcam.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(webcam / f"w{i}.png"), _real(rng, 64))
    broken = make_dataset(root / "b_broken", seed=5, n=4)
    (broken / "fake" / "entire_synthesis" / "ddpm" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "c_empty").mkdir()
    reals = root / "d_reals_only" / "real" / "ffhq"
    reals.mkdir(parents=True)
    for i in range(4):
        cv2.imwrite(str(reals / f"r{i}.png"), _real(rng, 64))
    (root / "README.md").write_text("not a set: files beside the sets are ignored\n")
    return root


def test_cli_eval_suite_scores_each_set_and_summarises_the_scorable_ones(env, suite_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mfclip_cli.cli import app
    from mfclip_cli.evaluate import SUITE_SCHEMA_ID

    monkeypatch.setenv("MFCLIP_CACHE", str(env["base"] / "cache"))
    out, plots = tmp_path / "suite.json", tmp_path / "plots"
    res = CliRunner().invoke(app, ["eval", env["ckpt"], "--suite", str(suite_dir), "--json", str(out),
                                   "--bootstrap", "20", "--robustness", "--plots", str(plots),
                                   "--workers", "0", "--device", "cpu"], terminal_width=200)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == SUITE_SCHEMA_ID
    sets = {s["name"]: s for s in doc["sets"]}
    assert list(sets) == ["a_normal", "b_broken", "c_empty", "d_reals_only"]

    a, b, c, d = (sets[k] for k in sets)
    assert (a["status"], a["n_real"], a["n_fake"]) == ("scored", 11, 8)
    assert {r["name"] for r in a["rows"]} >= {"all", *GENERATORS}
    assert a["rows"][0]["auc_ci"] is not None  # --bootstrap applies per set
    assert [r["perturbation"] for r in a["robustness"]] == list(PERTURBATIONS)  # and --robustness
    assert {s["source"]: s["n"] for s in a["real_sources"]} == {"ffhq": 8, "webcam": 3}
    assert (b["status"], b["n_real"], b["n_fake"], b["skipped"]) == ("scored", 8, 8, 1)
    assert b["skipped_files"][0]["path"].endswith("broken.png")
    assert c["status"] == d["status"] == "not_scored" and c["rows"] == d["rows"] == []
    assert "empty set" in c["error"]
    assert "only real images (4)" in d["error"] and "AUC undefined" in d["error"]

    summary = doc["summary"]
    aucs = [s["rows"][0]["auc"] for s in (a, b)]
    assert summary["mean_auc"] == pytest.approx(np.mean(aucs))
    assert summary["min_auc"] == pytest.approx(min(aucs))
    real_accs = {(s["name"], src["source"]): src["real_acc"] for s in (a, b) for src in s["real_sources"]}
    assert summary["worst_real_acc"] == pytest.approx(min(real_accs.values()))
    assert real_accs[(summary["worst_real_set"], summary["worst_real_source"])] == summary["worst_real_acc"]
    assert (summary["n_sets"], summary["n_sets_scored"], summary["n_sets_unscored"]) == (4, 2, 2)
    assert summary["unscored_sets"] == ["c_empty", "d_reals_only"]

    assert {p.parent.name for p in plots.rglob("*.png")} == {"a_normal", "b_broken"}  # --plots DIR/<set>/
    for text in ("a_normal", "stylegan2", "webcam", "empty set", "only real images", "mean AUC",
                 "2 set(s) not scored"):
        assert text in res.output


def test_suite_real_acc_is_per_real_source_at_the_threshold(env, suite_dir, monkeypatch):
    from mfclip_cli.evaluate import SuiteOptions, run_suite, run_suite_model
    from mfclip_cli.model.checkpoint import load_checkpoint

    monkeypatch.setenv("MFCLIP_CACHE", str(env["base"] / "cache"))
    model, meta = load_checkpoint(env["ckpt"])
    policy = meta.input_spec().crop
    opts = SuiteOptions(env["ckpt"], str(suite_dir), workers=0, batch_size=16)
    # threshold 0 flags every image fake, one above 1 none: real-ACC 0 and 1 for every source
    flag_all = run_suite_model(model, 0.0, policy, opts)
    flag_none = run_suite_model(model, 1.01, policy, opts)
    assert {s.real_acc for r in flag_all.sets for s in r.real_sources} == {0.0}
    assert {s.real_acc for r in flag_none.sets for s in r.real_sources} == {1.0}
    assert flag_all.summary.worst_real_acc == 0.0 and flag_all.summary.worst_real_set == "a_normal"
    assert flag_none.summary.worst_real_acc == 1.0
    assert flag_all.summary.mean_auc == pytest.approx(flag_none.summary.mean_auc)  # AUC ignores the threshold

    # the checkpoint path and the loaded model give the same numbers; events report every set
    events = []
    by_path = run_suite(opts, on_event=lambda event, payload: events.append((event, payload)))
    by_model = run_suite_model(model, meta.decision_threshold().value, policy, opts)
    assert by_path.summary == by_model.summary
    assert by_path.set_result("a_normal").rows == by_model.set_result("a_normal").rows
    assert [p["set"] for e, p in events if e == "set"] == ["a_normal", "b_broken", "c_empty", "d_reals_only"]
    assert any(e == "score" and p["done"] == p["total"] == 19 for e, p in events)
    assert by_path.to_json()["checkpoint"]["sha256"] == meta.sha256


def test_suite_with_no_scorable_set_or_no_set_is_an_error(env, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mfclip_cli.cli import app
    from mfclip_cli.evaluate import SuiteOptions, run_suite

    monkeypatch.setenv("MFCLIP_CACHE", str(env["base"] / "cache"))
    with pytest.raises(MfclipError, match="no sub-folders"):
        run_suite(SuiteOptions(env["ckpt"], str(tmp_path), workers=0))
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["eval", env["ckpt"], "--suite", str(tmp_path), "--workers", "0",
                                   "--device", "cpu"], terminal_width=200)
    assert res.exit_code == 2 and "no set" in res.output and "empty set" in res.output


def test_cli_suite_and_data_are_mutually_exclusive(env, suite_dir):
    from typer.testing import CliRunner

    from mfclip_cli.cli import app

    runner = CliRunner()
    both = runner.invoke(app, ["eval", env["ckpt"], "--suite", str(suite_dir), "--data", str(env["fresh"])],
                         terminal_width=200)
    assert both.exit_code == 2 and "not both" in both.output
    neither = runner.invoke(app, ["eval", env["ckpt"]], terminal_width=200)
    assert neither.exit_code == 2 and "--suite" in neither.output
    split = runner.invoke(app, ["eval", env["ckpt"], "--suite", str(suite_dir), "--split", "test"],
                          terminal_width=200)
    assert split.exit_code == 2 and "--split" in split.output and "--suite" in split.output
