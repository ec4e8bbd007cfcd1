"""`mfclip eval`: per-generator rows, robustness, plots, JSON, overlap guard, calibration, skipped files, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from mfclip_cli.data.transforms import PERTURBATIONS
from mfclip_cli.errors import MfclipError
from mfclip_cli.evaluate import SCHEMA_ID, EvalOptions, render_eval, run_eval

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
            batch_size=8, workers=0, protocol="in-domain"))
        yield {"base": base, "ckpt": result.best_checkpoint, "train": train_root, "fresh": fresh_root}
    torch.set_num_threads(threads)


def _opts(env, data: Path, **kw) -> EvalOptions:
    return EvalOptions(checkpoint=env["ckpt"], data=str(data), workers=0, batch_size=16, device="cpu", **kw)


def test_eval_reports_per_generator_rows_robustness_plots_and_json(env, tmp_path):
    out = tmp_path / "eval.json"
    result = run_eval(_opts(env, env["fresh"], robustness=True, bootstrap=20, json_out=str(out),
                            plots=str(tmp_path / "plots"), strict=True))
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

    records = read_dataset(env["train"])
    opts = _opts(env, env["train"], split="test")
    sizes = {}
    for frac in (0.2, 0.5):
        sets, notes = select_sets(opts, records, {"training": {"val_frac": 0.1, "test_frac": frac}})
        sizes[frac] = len(sets["split:test"])
        assert f"test {frac:g}" in notes[0]
    assert 0 < sizes[0.2] < sizes[0.5] < len(records)
    # an explicit --test-frac wins over the record; no record means train's default 0.2
    sets, _ = select_sets(replace(opts, test_frac=0.5), records, {"training": {"test_frac": 0.2}})
    assert len(sets["split:test"]) == sizes[0.5]
    sets, _ = select_sets(opts, records, {})
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
    assert meta["threshold"]["method"] == "target_fpr"
    assert meta["threshold"]["data"] == str(calib)
    assert meta["threshold"]["value"] == pytest.approx(result.threshold["value"])
    assert meta["threshold"]["previous"]["value"] == pytest.approx(old["threshold"]["value"])
    assert meta["training"] == old["training"] and "sha256" not in meta
    assert result.sets[0].row("all").metrics.threshold == pytest.approx(meta["threshold"]["value"])
    # the new checkpoint flags at most 10% of the calibration reals
    check = run_eval(replace(_opts(env, calib), checkpoint=str(out)))
    assert check.sets[0].row("all").metrics.real_acc >= 0.9


def test_default_calibrated_path_is_next_to_the_checkpoint(env, tmp_path):
    import shutil

    ckpt = tmp_path / "model.safetensors"
    shutil.copy(env["ckpt"], ckpt)
    result = run_eval(replace(_opts(env, env["fresh"]), checkpoint=str(ckpt), calibrate=str(env["fresh"])))
    assert result.calibrated_checkpoint["path"] == str(tmp_path / "model.calibrated.safetensors")
    assert result.threshold["method"] == "eer"
    assert any("calibration data" in w for w in result.warnings)


def test_corrupt_image_is_skipped_and_counted(env, tmp_path):
    import shutil

    root = tmp_path / "with_bad"
    shutil.copytree(env["fresh"], root)
    (root / "fake" / "entire_synthesis" / "ddpm" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = run_eval(_opts(env, root), progress=True)
    assert result.skipped == {"all": 1}
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
