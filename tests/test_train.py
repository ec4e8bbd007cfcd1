"""`mfclip train` (SPEC §5-6): learning, run folder, protocols, crash + resume, determinism, DDP, freezing.

Every run here is a toy (tiny preset or a few effnet-lite0 steps, crop policy 'none' on generated or
pre-cropped images) so the file stays within a few minutes on two CPU cores.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from conftest import FACES_DIR

from mfclip_cli.cli import app
from mfclip_cli.data.layouts import read_dataset
from mfclip_cli.data.manifest import write_manifest_csv
from mfclip_cli.model import build_model, load_checkpoint, load_preset, read_checkpoint_meta
from mfclip_cli.train import TrainOptions, run_training

LOSS_TERMS = ("train_loss", "contrastive_loss", "kl_loss", "ce_loss", "val_loss")
TINY = {"preset": "tiny", "crop": "none", "device": "cpu", "workers": 0}
TINY_CLI = ["--preset", "tiny", "--crop", "none", "--device", "cpu", "--workers", "0", "--quiet"]
SUBPROCESS_TIMEOUT = 600  # a deadlocked DDP run or a hung resume fails the test instead of the CI job


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _mfclip(args: list[str], *, torchrun: bool = False, **env: str) -> subprocess.CompletedProcess:
    """Run `mfclip ARGS` (or under `torchrun` with two CPU processes) with the test's environment + ``env``."""
    if torchrun:
        exe = Path(sys.executable).parent / "torchrun"
        cmd = [str(exe), "--standalone", "--nproc_per_node", "2", "-m", "mfclip_cli", *args]
    else:
        cmd = [sys.executable, "-m", "mfclip_cli", *args]
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, check=False)


# `mfclip ARGS` whose training callback SIGKILLs the process after optimizer step S of epoch E (argv[1]="E:S"):
# a hard crash mid-epoch, driven from the test side through the callback every run reports to
_KILLING_MFCLIP = """
import os, signal, sys
import mfclip_cli.train as train
from mfclip_cli.cli import main

kill_at = tuple(int(x) for x in sys.argv.pop(1).split(":"))
run_training = train.run_training

def run_training_then_crash(opts, *, on_event, **kw):
    def crash_at(event, payload):
        on_event(event, payload)
        if event == "step" and (payload["epoch"], payload["step"]) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return run_training(opts, on_event=crash_at, **kw)

train.run_training = run_training_then_crash
sys.argv[0] = "mfclip"
main()
"""


def _mfclip_killed_at(args: list[str], epoch: int, step: int) -> subprocess.CompletedProcess:
    """Run `mfclip ARGS`, SIGKILLed after optimizer step ``step`` of epoch ``epoch`` (a crash, state unsaved)."""
    cmd = [sys.executable, "-c", _KILLING_MFCLIP, f"{epoch}:{step}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, check=False)


def _explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def test_train_help_lists_the_presets_layouts_and_protocols_of_the_registries():
    from typer.testing import CliRunner

    from mfclip_cli.data.layouts import LAYOUTS
    from mfclip_cli.data.protocols import PROTOCOLS
    from mfclip_cli.model import available_presets

    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    assert "Model preset: " + " | ".join(available_presets()) in res.output
    assert " | ".join(LAYOUTS) in res.output and " | ".join(PROTOCOLS) in res.output
    assert "patience 5" not in res.output  # the default lives on --patience alone


# --- learning and the run folder ----------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_model_learns_a_checkerboard_upsampler_artefact(tmp_path, train_cache, train_texture_set_factory):
    data = train_texture_set_factory(tmp_path / "data", 56, 56)
    opts = TrainOptions(data=str(data), out=str(tmp_path / "run"), protocol="in-domain", epochs=4,
                        batch_size=16, lr=2e-3, val_frac=0.2, **TINY)

    [result] = run_training(opts).runs

    run = Path(result.run_dir)
    meta = read_checkpoint_meta(result.best_checkpoint)
    assert meta.training.val["auc"] >= 0.95
    assert 0.0 <= meta.threshold.value <= 1.0 and 0.0 <= result.threshold <= 1.0
    rows = _metrics(run)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert all(math.isfinite(r[k]) for r in rows for k in LOSS_TERMS)
    assert max(r["val_auc"] for r in rows) >= 0.95
    for name in ("best.safetensors", "last.safetensors", "last_state.safetensors", "curves.png",
                 "config.json", "manifest.csv", "train.csv", "skipped.csv"):
        assert (run / name).is_file(), name
    tests = json.loads((run / "test_metrics.json").read_text())
    all_row = next(r for r in tests["in-domain"]["rows"] if r["name"] == "all")
    assert all_row["auc"] >= 0.9


@pytest.mark.slow
def test_cli_cross_generator_tests_the_held_out_generator_as_its_own_row(tmp_path, train_cache, face_paths):
    """End to end through the CLI on 32 files per folder of the shared face set, one epoch of 2 steps.

    `--crop none` (the images are already face crops) keeps the run free of face detection, so it is fast.
    """
    from typer.testing import CliRunner

    per_folder: dict[str, list] = defaultdict(list)
    for r in read_dataset(FACES_DIR):
        if len(per_folder[r.source]) < 32:
            per_folder[r.source].append(r)
    manifest = tmp_path / "faces.csv"
    write_manifest_csv([r for recs in per_folder.values() for r in recs], manifest)
    run = tmp_path / "run"

    result = CliRunner().invoke(app, [
        "train", "--data", str(manifest), "--out", str(run), "--protocol", "cross-generator",
        "--test-generators", "sd14_blonde_woman", "--preset", "effnet-lite0", "--epochs", "1",
        "--max-steps", "2", "--batch-size", "8", "--crop", "none", "--workers", "0", "--device", "cpu",
        "--augment", "strong", "--image-init", "random", "--bootstrap", "50"])

    assert result.exit_code == 0, (result.output, result.exception)
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["augment"] == "strong" and config["options"]["bootstrap"] == 50
    assert config["model"]["image_init"] == "random"
    held_out = "generator:stable diffusion 1.4"
    tests = json.loads((run / "test_metrics.json").read_text())
    assert list(tests) == [held_out]
    all_row = next(r for r in tests[held_out]["rows"] if r["name"] == "all")
    assert all_row["n_fake"] == 32 and all_row["n_real"] > 0
    lo, hi = all_row["auc_ci"]  # bootstrap CI of the held-out set
    assert 0.0 <= lo <= all_row["auc"] <= hi <= 1.0
    assert held_out in result.output
    assert (run / "best.safetensors").is_file()


# --- crash and resume ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_finishes_the_same_run(tmp_path, train_cache, train_small_set):
    run = tmp_path / "run"
    args = ["train", "--data", str(train_small_set / "manifest.csv"), "--out", str(run), "--epochs", "3",
            "--max-steps", "2", "--batch-size", "8", *TINY_CLI]

    killed = _mfclip_killed_at(args, epoch=1, step=1)  # SIGKILL after the first step of the 2nd epoch

    assert killed.returncode == -signal.SIGKILL, _explain(killed)
    before = _metrics(run)
    assert [r["epoch"] for r in before] == [0]
    assert not (run / "test_metrics.json").exists()
    config = (run / "config.json").read_text()

    resumed = _mfclip(["train", "--resume", str(run), "--quiet"])

    assert resumed.returncode == 0, _explain(resumed)
    after = _metrics(run)
    assert [r["epoch"] for r in after] == [0, 1, 2]
    assert after[0] == before[0]
    assert (run / "config.json").read_text() == config
    model, meta = load_checkpoint(run / "best.safetensors")
    assert model.cfg.preset == "tiny" and meta.training.best_epoch in (0, 1, 2)
    assert "in-domain" in json.loads((run / "test_metrics.json").read_text())


# --- determinism --------------------------------------------------------------------------------------
def test_same_seed_gives_the_same_losses_and_another_seed_does_not(tmp_path, train_cache, train_small_set):
    def train_losses(seed: int, out: str) -> list[float]:
        opts = TrainOptions(data=str(train_small_set / "manifest.csv"), out=str(tmp_path / out), epochs=1,
                            max_steps=2, batch_size=8, lr=1e-3, seed=seed, **TINY)
        run_training(opts)
        return [r["train_loss"] for r in _metrics(tmp_path / out)]

    first, again, other = train_losses(0, "a"), train_losses(0, "b"), train_losses(1, "c")

    assert first == again
    assert first != other


# --- bad training files -------------------------------------------------------------------------------
def test_corrupt_training_files_are_skipped_and_listed(tmp_path, train_cache, train_small_set):
    data = tmp_path / "data"
    shutil.copytree(train_small_set, data, ignore=shutil.ignore_patterns("*.csv"))
    empty = data / "real" / "textures" / "empty.png"
    garbage = data / "real" / "textures" / "garbage.jpg"
    empty.write_bytes(b"")
    garbage.write_bytes(os.urandom(2048))
    opts = TrainOptions(data=str(data), out=str(tmp_path / "run"), epochs=1, max_steps=1, batch_size=8,
                        val_frac=0.25, test_frac=0.25, **TINY)

    [result] = run_training(opts).runs

    run = Path(result.run_dir)
    lines = (run / "skipped.csv").read_text().splitlines()
    assert lines[0] == "path,code,message"
    codes = {row.split(",")[0]: row.split(",")[1] for row in lines[1:]}
    assert set(codes) == {str(empty), str(garbage)}
    assert all(code and code != "internal_error" for code in codes.values()), codes
    assert result.skipped == 2
    assert (run / "best.safetensors").is_file()
    assert [r["epoch"] for r in _metrics(run)] == [0]


# --- distributed --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_two_cpu_ranks_train_and_stop_together(tmp_path, train_cache, train_small_set):
    """gloo on CPU; --patience 0 makes rank 0 stop after epoch 1 of 2, which the other rank must follow."""
    run = tmp_path / "run"

    proc = _mfclip(["train", "--data", str(train_small_set / "manifest.csv"), "--out", str(run), "--epochs", "2",
                    "--patience", "0", "--max-steps", "2", "--batch-size", "4", *TINY_CLI], torchrun=True)

    assert proc.returncode == 0, _explain(proc)
    assert [r["epoch"] for r in _metrics(run)] == [0]
    assert sorted(p.name for p in run.glob("*.safetensors")) == [
        "best.safetensors", "last.safetensors", "last_state.safetensors"]
    assert not list(run.glob(".*.tmp"))
    load_checkpoint(run / "best.safetensors")
    assert "in-domain" in json.loads((run / "test_metrics.json").read_text())


# --- freezing and LoRA --------------------------------------------------------------------------------
TEXT_KEY = "text.transformer.resblocks.0.mlp.c_fc.weight"
IMAGE_KEY = "visual.transformer.resblocks.0.mlp.c_fc.weight"


def _quick_run(tmp_path: Path, data: Path, **kw) -> dict[str, torch.Tensor]:
    opts = TrainOptions(data=str(data / "manifest.csv"), out=str(tmp_path / "run"), epochs=1, max_steps=2,
                        batch_size=8, lr=1e-2, seed=0, **TINY, **kw)
    [result] = run_training(opts).runs
    model, _ = load_checkpoint(result.best_checkpoint)
    return model.state_dict()


def test_freeze_text_leaves_the_text_tower_as_initialised(tmp_path, train_cache, train_small_set):
    fresh = build_model(load_preset("tiny"), seed=0).state_dict()

    trained = _quick_run(tmp_path, train_small_set, freeze_text=True)

    assert all(torch.equal(trained[k], fresh[k]) for k in fresh if k.startswith("text."))
    assert not torch.equal(trained[IMAGE_KEY], fresh[IMAGE_KEY])


def test_lora_run_saves_a_merged_checkpoint_with_trained_adapters(tmp_path, train_cache, train_small_set):
    fresh = build_model(load_preset("tiny"), seed=0).state_dict()

    trained = _quick_run(tmp_path, train_small_set, model_overrides={"lora_rank": 2})

    assert not any("lora" in k for k in trained)
    assert set(trained) == set(fresh)
    assert not torch.equal(trained[TEXT_KEY], fresh[TEXT_KEY])


def test_a_failed_run_does_not_block_its_rerun(tmp_path):
    """#15.8: a run that failed before its first checkpoint leaves only config.json; the rerun is not
    refused as "already holds a training run" (it fails, here, on the same bad data again)."""
    from typer.testing import CliRunner

    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "no_such_data"), "--out", str(out), "--preset", "tiny", "-q"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 2 and (out / "config.json").exists()  # the stub a failed start leaves
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 2 and "already holds a training run" not in second.stderr, second.stderr
    (out / "best.safetensors").write_bytes(b"")  # a real run's folder is still protected
    third = CliRunner().invoke(app, args)
    assert third.exit_code == 2 and "already holds a training run" in third.stderr


# --- weight averaging ---------------------------------------------------------------------------------
def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _swa_opts(data: Path, out: Path, average: str = "swa") -> TrainOptions:
    return TrainOptions(data=str(data / "manifest.csv"), out=str(out), epochs=3, max_steps=2, batch_size=8,
                        lr=1e-3, patience=5, seed=0, bootstrap=0, weight_average=average, **TINY)


def test_swa_averages_every_step_from_the_second_epoch_and_saves_the_average(tmp_path, train_cache,
                                                                            train_small_set):
    training = run_training(_swa_opts(train_small_set, tmp_path / "run"))
    [result] = training.runs
    doc = json.loads(json.dumps(training.to_json()))
    assert doc["out"] == str(tmp_path / "run") and doc["runs"][0]["best_checkpoint"] == result.best_checkpoint

    run = Path(result.run_dir)
    average = _tensors(run / "average.safetensors")
    assert int(average["n_averaged"]) == 4  # 2 steps in each of epochs 1 and 2; epoch 0 is left out
    model, meta = load_checkpoint(run / "best.safetensors")
    assert meta.training.weight_average == "swa"
    last, _ = load_checkpoint(run / "last.safetensors")
    best_sd, last_sd = model.state_dict(), last.state_dict()
    trained = [k for k in best_sd if k.startswith(("image_proj", "noise"))]
    assert trained and any(not torch.equal(best_sd[k], last_sd[k]) for k in trained)  # the average, not the last
    if meta.training.best_epoch == 2:  # the best epoch's average is the final one
        for k in trained:
            torch.testing.assert_close(best_sd[k], average[f"module.{k}"].to(best_sd[k].dtype))
    else:
        assert meta.training.best_epoch == 1


def test_an_interrupted_swa_run_resumes_to_the_same_average(tmp_path, train_cache, train_small_set):
    run_training(_swa_opts(train_small_set, tmp_path / "whole"))

    class Crash(Exception):
        pass

    def crash_in_epoch_2(event, payload):
        if event == "step" and (payload["epoch"], payload["step"]) == (2, 1):
            raise Crash

    with pytest.raises(Crash):
        run_training(_swa_opts(train_small_set, tmp_path / "cut"), on_event=crash_in_epoch_2)
    assert int(_tensors(tmp_path / "cut" / "average.safetensors")["n_averaged"]) == 2  # epoch 1 saved
    run_training(_swa_opts(train_small_set, tmp_path / "cut"), resume=True)

    a, b = _tensors(tmp_path / "whole" / "average.safetensors"), _tensors(tmp_path / "cut" / "average.safetensors")
    assert int(b["n_averaged"]) == 4 and a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_ema_and_off_leave_no_average_behind_when_off(tmp_path, train_cache, train_small_set):
    [ema] = run_training(_swa_opts(train_small_set, tmp_path / "ema", "ema")).runs
    [off] = run_training(_swa_opts(train_small_set, tmp_path / "off", "off")).runs

    assert int(_tensors(Path(ema.run_dir) / "average.safetensors")["n_averaged"]) == 4
    assert not (Path(off.run_dir) / "average.safetensors").exists()
    assert read_checkpoint_meta(off.best_checkpoint).training.weight_average == "off"
