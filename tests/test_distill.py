"""`mfclip train --teacher CKPT`: distilling frozen models' P(fake) into the student (the loss, the run, the refusals)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import TINY

from mfclip_cli.errors import MfclipError
from mfclip_cli.model import MFCLIPLoss, load_checkpoint, load_preset, read_checkpoint_meta, save_checkpoint
from mfclip_cli.model.preprocess import prepare_batch
from mfclip_cli.train import TrainOptions, run_training


def _labelled_batch(seed: int = 0, n: int = 8) -> tuple[MFCLIPLoss, dict, torch.Tensor, list[int]]:
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(n, 64, generator=gen)
    y = torch.tensor([0, 1] * (n // 2))
    out = {"logits": torch.randn(n, 2, generator=gen, requires_grad=True), "sim": torch.randn(n, n, generator=gen),
           "t": torch.randn(n, 64, generator=gen), "p": torch.randn(n, 64, generator=gen), "v": v}
    return MFCLIPLoss(load_preset("tiny").loss), out, y, y.tolist()


def test_a_teacher_that_agrees_with_the_labels_leaves_the_loss_as_it_was():
    loss_fn, out, y, ids = _labelled_batch()
    plain = loss_fn(out, y, ids)
    taught = loss_fn(out, y, ids, teacher_p=y.float(), teacher_weight=0.7)

    torch.testing.assert_close(taught["loss"], plain["loss"])
    torch.testing.assert_close(taught["distill_loss"], plain["ce_loss"])
    assert "distill_loss" not in plain


def test_the_teachers_probabilities_pull_the_logits_their_way_in_proportion_to_the_weight():
    loss_fn, out, y, ids = _labelled_batch(seed=1)

    def fake_margin_grad(weight: float) -> torch.Tensor:
        """d loss / d (logit_fake - logit_real) per sample, teacher saying the opposite of every label."""
        logits = out["logits"].detach().clone().requires_grad_(True)
        terms = loss_fn({**out, "logits": logits}, y, ids, teacher_p=1.0 - y.float(), teacher_weight=weight)
        terms["loss"].backward()
        return (logits.grad[:, 1] - logits.grad[:, 0]).detach()

    labels_only, half, teacher_only = fake_margin_grad(0.0), fake_margin_grad(0.5), fake_margin_grad(1.0)
    sign = 1.0 - 2.0 * y.float()  # descent raises the fake margin of fakes (negative gradient) and lowers reals'
    assert torch.all(labels_only * sign > 0)
    assert torch.all(teacher_only * sign < 0)  # now every sample is pushed towards the teacher's side
    torch.testing.assert_close(half, (labels_only + teacher_only) / 2)


def _say_fake(src: Path, dst: Path, margin: float = 6.0) -> Path:
    """A teacher that calls every face fake: ``src``'s checkpoint with its head's output fixed at P(fake) ~ 1."""
    model, meta = load_checkpoint(src)
    with torch.no_grad():
        head = model.mlp_head[-1]
        head.weight.zero_()
        head.bias.copy_(torch.tensor([-margin, margin]))
    return save_checkpoint(dst, model, meta=meta)


def _opts(data: Path, out: Path, **kw) -> TrainOptions:
    kw = {"epochs": 1, "max_steps": 4, "batch_size": 8, "lr": 1e-2, "seed": 0, "bootstrap": 0, **TINY, **kw}
    return TrainOptions(data=str(data / "manifest.csv"), out=str(out), **kw)


def _mean_p_fake(ckpt: str, data: Path) -> float:
    import cv2

    model, meta = load_checkpoint(ckpt)
    size = meta.input.preprocess.size
    crops = []
    for p in sorted((data / "real").rglob("*.png"))[:12]:
        bgr = cv2.resize(cv2.imread(str(p)), (size, size), interpolation=cv2.INTER_AREA)
        crops.append(np.ascontiguousarray(bgr[:, :, ::-1]))
    image, noise = prepare_batch(crops, meta.input.preprocess)
    with torch.no_grad():
        return float(model.predict_proba(torch.from_numpy(image), torch.from_numpy(noise)).mean())


@pytest.mark.slow
def test_a_student_taught_by_a_teacher_that_says_fake_scores_reals_more_fake_and_records_it(
        tmp_path, train_cache, train_small_set):
    [first] = run_training(_opts(train_small_set, tmp_path / "teacher_run")).runs
    teacher = _say_fake(Path(first.best_checkpoint), tmp_path / "teacher.safetensors")
    [plain] = run_training(_opts(train_small_set, tmp_path / "plain")).runs
    [taught] = run_training(_opts(train_small_set, tmp_path / "taught", teachers=(str(teacher),),
                                  distill_weight=1.0)).runs

    assert list((train_small_set / "real").rglob("*.png")), "the set's reals are PNGs"
    p_plain, p_taught = _mean_p_fake(plain.best_checkpoint, train_small_set), _mean_p_fake(
        taught.best_checkpoint, train_small_set)
    assert p_taught > p_plain + 0.1, (p_plain, p_taught)
    meta = read_checkpoint_meta(taught.best_checkpoint)
    assert meta.training.teachers == (hashlib.sha256(teacher.read_bytes()).hexdigest(),)
    assert meta.training.distill_weight == 1.0
    assert read_checkpoint_meta(plain.best_checkpoint).training.teachers is None

    # an interrupted run (here: stopped before its test scores) resumes only with the same teacher file
    (Path(taught.run_dir) / "test_metrics.json").unlink()
    _say_fake(Path(first.best_checkpoint), teacher, margin=5.0)  # another model under the same name
    with pytest.raises(MfclipError, match="teacher checkpoints .* changed"):
        run_training(_opts(train_small_set, tmp_path / "taught", teachers=(str(teacher),), distill_weight=1.0),
                     resume=True)


def test_a_teacher_that_reads_faces_differently_is_refused_before_training(tmp_path, train_cache, train_small_set):
    [first] = run_training(_opts(train_small_set, tmp_path / "teacher_run", max_steps=1)).runs
    student = _opts(train_small_set, tmp_path / "student", teachers=(first.best_checkpoint,),
                    model_overrides={"colour_norm": "per-crop"})

    with pytest.raises(MfclipError, match="reads faces differently"):
        run_training(student)
    assert not list((tmp_path / "student").glob("*.safetensors"))


@pytest.mark.parametrize(("kw", "message"), [({"teachers": ("no/such.safetensors",)}, "no teacher checkpoint"),
                                              ({"distill_weight": 1.5}, "between 0 and 1")])
def test_bad_distillation_options_fail_with_a_clear_message(tmp_path, train_small_set, kw, message):
    with pytest.raises(MfclipError, match=message):
        run_training(_opts(train_small_set, tmp_path / "run", **kw))
