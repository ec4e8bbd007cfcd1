"""One training run (:func:`train_one`): crops, model, loaders, epochs with validation, checkpoints, test scores."""

from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from .. import __version__
from ..data.crops import CropCache, CropEntry, SkippedEntry, prepare_crops
from ..data.dataset import CropDataset
from ..data.manifest import manifest_sha256, write_manifest_csv
from ..data.protocols import ProtocolSplit, write_split_files
from ..data.transforms import parity_chain, train_augment
from ..decision import choose_threshold, threshold_method
from ..errors import MfclipError
from ..evaluate import report_for_set, score_entries
from ..fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text, jsonable
from ..metrics import binary_metrics
from ..model import MFCLIPLoss, build_model, load_checkpoint, save_checkpoint
from ..model.metadata import CheckpointMeta, InputSpec, TaxonomyRecord, ThresholdRecord, TrainingRecord
from ..model.mfclip import MFCLIP
from ..paths import cache_dir
from ..runtime import resolve_device
from .options import Callback, EpochLog, TrainOptions, TrainResult, no_callback
from .sampling import (
    autoencoder_for,
    pseudo_fake_kinds,
    reconstructed_entries,
    self_blended_entries,
    source_balanced_weights,
    swap_blended_entries,
)
from .setup import crop_policy_for, freeze_towers, model_config_for, process_rank, set_train_mode, unwrap
from .state import STATE_FILE, RunState


# --- one run -------------------------------------------------------------------------------------------------
def _prompt_ids(model: MFCLIP, labels) -> list[int]:
    texts = model.prompts_for(labels)
    uniq = {t: i for i, t in enumerate(sorted(set(texts)))}
    return [uniq[t] for t in texts]


def _write_skipped(path: Path, skipped: list[SkippedEntry]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "code", "message"])
    for s in skipped:
        w.writerow([s.record.path, s.code, s.message])
    atomic_write_text(path, buf.getvalue())




@torch.no_grad()
def _validate(model: MFCLIP, loss_fn: MFCLIPLoss, loader: DataLoader, entries: list[CropEntry], device: str
              ) -> tuple[float, np.ndarray, np.ndarray]:
    model.eval()
    losses, scores, labels = [], np.zeros(len(entries)), np.zeros(len(entries), dtype=int)
    for image, noise, y, idx in loader:
        lbl = [entries[i].record.label for i in idx.tolist()]
        image, noise, y = image.to(device), noise.to(device), y.to(device)
        out = model(image, noise, lbl)
        if model.cfg.spa == "matrix" and image.shape[0] != model.cfg.spa_batch:
            loss = float(loss_fn.cfg.ce_weight) * torch.nn.functional.cross_entropy(out["logits"], y)
        else:
            loss = loss_fn(out, y, _prompt_ids(model, lbl))["loss"]
        losses.append(float(loss) * len(idx))
        scores[idx.numpy()] = out["logits"].float().softmax(-1)[:, 1].cpu().numpy()
        labels[idx.numpy()] = y.cpu().numpy()
    model.train()
    return sum(losses) / max(len(entries), 1), scores, labels


@dataclass
class _Data:
    """A run's face crops: training (with any pseudo-fakes), validation and test entries, and skipped files."""

    train: list[CropEntry]
    val: list[CropEntry]
    tests: dict[str, list[CropEntry]]
    skipped: list[SkippedEntry]


@dataclass
class _Trainer:
    """The model and what updates it."""

    model: torch.nn.Module  # MFCLIP, or its DistributedDataParallel wrapper
    loss_fn: MFCLIPLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    use_amp: bool
    averaged: AveragedModel | None = None  # --weight-average: the running average of the weights
    average_from: int = 0  # the first epoch whose steps enter the average
    teachers: list[MFCLIP] = field(default_factory=list)  # --teacher: frozen models distilled into this one


AVERAGE_FILE = "average.safetensors"
EMA_DECAY = 0.995


@torch.no_grad()
def _follow(averaged: AveragedModel, model: torch.nn.Module) -> None:
    """One step into the average: the parameters are averaged, the buffers copied from the model."""
    averaged.update_parameters(model)
    for mine, theirs in zip(averaged.module.buffers(), model.buffers(), strict=True):
        mine.copy_(theirs)


def _save_average(run_dir: Path, averaged: AveragedModel) -> None:
    """The running average (weights, buffers and its count) beside last.safetensors, so --resume goes on with it."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in averaged.state_dict().items()}
    atomic_write_bytes(run_dir / AVERAGE_FILE, save(tensors))


def _load_average(run_dir: Path, averaged: AveragedModel) -> None:
    from safetensors.torch import load_file

    averaged.load_state_dict(load_file(str(run_dir / AVERAGE_FILE)))


def _judged(trainer: _Trainer, core: MFCLIP) -> MFCLIP:
    """The weights an epoch is validated and saved with: the running average once it holds a step."""
    if trainer.averaged is not None and int(trainer.averaged.n_averaged) > 0:
        return trainer.averaged.module
    return core


def train_one(opts: TrainOptions, split: ProtocolSplit, run_dir: Path, *, resume: bool = False,
              callback: Callback = no_callback) -> TrainResult:
    """Train one protocol split into ``run_dir`` (resuming from its last state when ``resume``).

    Steps: distributed set-up, crops, model and optimizer, resume, loaders, epochs (train, validate, save),
    test scores. ``callback(event, payload)`` hears every step ("step" after each batch).
    """
    torch.manual_seed(opts.seed)
    np.random.seed(opts.seed % (2**32))
    device, distributed = _init_distributed(resolve_device(opts.device))
    main_proc = process_rank() == 0
    run_dir.mkdir(parents=True, exist_ok=True)

    cfg = model_config_for(opts)
    policy = crop_policy_for(opts, cfg.preprocess.size)
    chain = parity_chain(opts.parity)
    if opts.train_fakes == "pseudo":  # the dataset's fakes are neither cropped for nor listed in training
        split = replace(split, train=[r for r in split.train if r.y == 0])
    data = _crops(opts, split, run_dir, policy, chain is not None, main_proc, callback)
    trainer = _trainer(opts, cfg, device)
    trainer.teachers, teacher_sha = _load_teachers(opts.teachers, policy, cfg.preprocess, device)
    state = RunState()
    last_ckpt, best_ckpt = run_dir / "last.safetensors", run_dir / "best.safetensors"
    if resume and (run_dir / STATE_FILE).is_file() and last_ckpt.is_file():
        saved, saved_meta = load_checkpoint(last_ckpt)
        was = saved_meta.training.teachers if saved_meta.training is not None else None
        if tuple(was or ()) != teacher_sha:
            raise MfclipError(f"the teacher checkpoints of {run_dir} changed since the run started (sha256 "
                              f"{list(was or [])} then, {list(teacher_sha)} now): put the same files back")
        trainer.model.load_state_dict(saved.state_dict())
        trainer.model.to(device)
        state = RunState.load(run_dir, trainer.optimizer, trainer.scheduler, trainer.scaler)
        if trainer.averaged is not None and (run_dir / AVERAGE_FILE).is_file():
            _load_average(run_dir, trainer.averaged)
        callback("resumed", {"epoch": state.next_epoch})

    parity = None if chain is None else (chain, policy)
    train_ds = _training_set(opts, cfg, data, policy, parity, run_dir, callback)
    sampler, gen = None, torch.Generator()
    if opts.balance == "sources" and not distributed:
        from torch.utils.data import WeightedRandomSampler

        sampler = WeightedRandomSampler(source_balanced_weights(data.train).tolist(), num_samples=len(data.train),
                                        replacement=True, generator=gen)
    elif distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_ds, shuffle=True, seed=opts.seed, drop_last=cfg.spa == "matrix")
        trainer.model = torch.nn.parallel.DistributedDataParallel(trainer.model, find_unused_parameters=True)
    per_rank = len(sampler) if sampler is not None else len(train_ds)  # a rank's loader sees only its shard
    drop_last = cfg.spa == "matrix" or per_rank > opts.batch_size
    loader = DataLoader(train_ds, batch_size=opts.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=opts.workers, drop_last=drop_last, generator=gen,
                        persistent_workers=False, pin_memory=device.startswith("cuda"))
    # validation sees the training distribution (the parity chain with draws fixed across epochs)
    val_loader = DataLoader(CropDataset(data.val, cfg.preprocess, seed=opts.seed, parity=parity, fixed_epoch=10**6),
                            batch_size=opts.batch_size, num_workers=opts.workers,
                            drop_last=cfg.spa == "matrix" and len(data.val) >= opts.batch_size)
    training = TrainingRecord(
        protocol=opts.protocol, split=split.name, data=str(opts.data),
        manifest_sha256=manifest_sha256(split.train + split.val), seed=opts.seed,
        package_version=__version__, preset=cfg.preset, val_frac=opts.val_frac,
        test_frac=opts.test_frac, augment=opts.augment, parity=opts.parity, balance=opts.balance,
        pseudo_fakes=opts.pseudo_fakes, weight_average=opts.weight_average,
        steps_per_epoch=opts.max_steps, image_init=cfg.image_init, freeze_image=opts.freeze_image,
        teachers=teacher_sha or None, distill_weight=opts.distill_weight if teacher_sha else None,
        train_fakes=opts.train_fakes if opts.train_fakes != "all" else None,
    )
    input_spec = InputSpec(policy, cfg.preprocess)
    # 64-bit content-hash prefixes of every training/validation file: eval's overlap guard compares with them
    every = data.train + data.val
    train_hashes = tuple(sorted({e.sha256[:16] for e in every})) if len(every) <= 500_000 else ()
    set_train_mode(unwrap(trainer.model), opts)
    epoch = state.next_epoch - 1
    for epoch in range(state.next_epoch, opts.epochs):
        t0 = time.monotonic()
        train_ds.set_epoch(epoch)
        gen.manual_seed(opts.seed * 1000 + epoch)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        sums, seen = _train_epoch(opts, trainer, loader, data.train, epoch, device, callback)
        train_time = time.monotonic() - t0
        if not main_proc:
            if _early_stop_agreed(distributed, False, device):
                break
            continue
        core = unwrap(trainer.model)
        judged = _judged(trainer, core)
        val_loss, val_scores, val_labels = _validate(judged, trainer.loss_fn, val_loader, data.val, device)
        set_train_mode(core, opts)
        method = threshold_method(opts.target_fpr, opts.fpr_per_source)
        thr, thr_info = choose_threshold(val_scores, val_labels, method, opts.target_fpr,
                                         sources=[e.record.source for e in data.val])
        m = binary_metrics(val_scores, val_labels, thr)
        log = EpochLog(epoch=epoch, train_loss=sums["loss"] / max(seen, 1),
                       contrastive_loss=sums["contrastive_loss"] / max(seen, 1),
                       kl_loss=sums["kl_loss"] / max(seen, 1), ce_loss=sums["ce_loss"] / max(seen, 1),
                       val_loss=val_loss, val_auc=m.auc, val_acc=m.acc, threshold=thr,
                       lr=trainer.optimizer.param_groups[0]["lr"], seconds=time.monotonic() - t0,
                       images_per_s=seen / max(train_time, 1e-9))
        # with --weight-average the run's product is the average: epochs before it starts cannot be the best
        eligible = trainer.averaged is None or judged is not core
        improved = state.record(epoch, asdict(log), val_loss, thr, eligible=eligible)
        if improved:
            meta = CheckpointMeta(
                threshold=thr_info, input=input_spec,
                taxonomy=TaxonomyRecord(tuple(sorted({e.record.generator for e in data.train}))),
                training=training.best(epoch=epoch, val=m.to_dict(), val_loss=val_loss, file_hashes16=train_hashes))
            save_checkpoint(best_ckpt, judged, meta=meta)  # merges LoRA into a copy, never into the model
        # last: weights + optimizer state, then metrics, so a crash at any point resumes consistently
        save_checkpoint(last_ckpt, core, merge=False, meta=CheckpointMeta(
            threshold=ThresholdRecord(float(thr), "eer on validation"), input=input_spec, training=training))
        if trainer.averaged is not None:
            _save_average(run_dir, trainer.averaged)
        state.save(run_dir, trainer.optimizer, trainer.scheduler, trainer.scaler)
        callback("epoch_end", {**asdict(log), "improved": improved})
        stop = state.bad_epochs >= opts.patience
        # rank 0 alone validates, so it tells the other ranks when to stop (else they wait in all-reduce)
        if _early_stop_agreed(distributed, stop, device):
            callback("early_stop", {"epoch": epoch})
            break
    if distributed:
        torch.distributed.barrier()
    tests = _test_scores(opts, split, data, best_ckpt, state, run_dir, device, callback) if main_proc else {}
    return TrainResult(str(run_dir), str(best_ckpt), epoch + 1, state.best_epoch, state.best_val_loss,
                       state.threshold, tests, len(data.skipped))


def _init_distributed(device: str) -> tuple[str, bool]:
    """(device, distributed): under torchrun, the process group is set up and each rank takes its own GPU."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
    return device, distributed


def _crops(opts: TrainOptions, split: ProtocolSplit, run_dir: Path, policy, geometry: bool, main_proc: bool,
           callback: Callback) -> _Data:
    """Face crops of every record of the split (cached); the run folder's manifest, split and skipped CSVs."""
    all_records = split.train + split.val + [r for recs in split.tests.values() for r in recs]
    callback("crops_start", {"total": len(all_records)})
    entries, skipped = prepare_crops(all_records, policy, CropCache(cache_dir() / "crops", policy),
                                     workers=opts.workers, on_done=lambda: callback("crop_done", {}),
                                     geometry=geometry)
    by_path = {e.record.path: e for e in entries}
    data = _Data(train=[by_path[r.path] for r in split.train if r.path in by_path],
                 val=[by_path[r.path] for r in split.val if r.path in by_path],
                 tests={name: [by_path[r.path] for r in recs if r.path in by_path]
                        for name, recs in split.tests.items()},
                 skipped=skipped)
    if main_proc:
        write_manifest_csv(all_records, run_dir / "manifest.csv")
        write_split_files(split, run_dir)
        _write_skipped(run_dir / "skipped.csv", skipped)
    callback("data", {"train": len(data.train), "val": len(data.val),
                      "tests": {k: len(v) for k, v in data.tests.items()}, "skipped": len(skipped)})
    train_classes = {e.record.y for e in data.train} | ({1} if opts.train_fakes == "pseudo" else set())
    if len(train_classes) < 2 or len({e.record.y for e in data.val}) < 2:
        raise MfclipError("after cropping, train or validation lacks one class; see skipped.csv in the run folder")
    return data


def _trainer(opts: TrainOptions, cfg, device: str) -> _Trainer:
    """The model (built from ``cfg``, towers frozen as asked), its loss, optimizer, LR schedule and scaler."""
    model = build_model(cfg, online=opts.online, seed=opts.seed)
    freeze_towers(model, opts)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=opts.lr, weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=opts.lr_step, gamma=opts.lr_gamma)
    use_amp = opts.amp and device.startswith("cuda")
    averaged = None
    if opts.weight_average != "off":  # a copy of the model (made before any DDP wrap) that follows its weights
        avg_fn = get_ema_multi_avg_fn(EMA_DECAY) if opts.weight_average == "ema" else None
        # parameters only: buffers (batch-norm statistics, the text tower's -inf attention mask) follow the model
        averaged = AveragedModel(model, multi_avg_fn=avg_fn, use_buffers=False)
    return _Trainer(model, MFCLIPLoss(cfg.loss), optimizer, scheduler,
                    torch.amp.GradScaler("cuda") if use_amp else None, use_amp,
                    averaged=averaged, average_from=min(1, opts.epochs - 1))


def _training_set(opts: TrainOptions, cfg, data: _Data, policy, parity, run_dir: Path,
                  callback: Callback) -> CropDataset:
    """The training dataset; pseudo-fakes (``--pseudo-fakes``) are appended to ``data.train`` here."""
    kinds = pseudo_fake_kinds(opts.pseudo_fakes)
    reals = [e for e in data.train if e.record.y == 0]
    blend, blend_from, donors, autoencoder, recon_from = None, None, {}, None, None
    soft = "sbi-soft" in kinds  # self-blends (and swaps) whose pasted copy is softened, never sharpened
    if {"sbi", "sbi-soft", "swap"} & set(kinds):
        from ..data.transforms import SelfBlend
        from ..faces import template_in_crop

        blend_from = len(data.train)
        if "sbi" in kinds or soft:
            data.train = data.train + self_blended_entries(reals, opts.seed)
        if "swap" in kinds:
            swaps, swap_donors = swap_blended_entries(reals, opts.seed)
            donors = {len(data.train) + k: d for k, d in enumerate(swap_donors)}
            data.train = data.train + swaps
        blend = SelfBlend(tuple(map(tuple, template_in_crop(policy).tolist())), p_sharpen=0.0 if soft else 0.5)
    if "ae" in kinds:
        autoencoder = autoencoder_for(run_dir, reals, opts.seed, callback)
        recon_from = len(data.train)
        data.train = data.train + reconstructed_entries(reals, opts.seed)
    return CropDataset(data.train, cfg.preprocess, augment=train_augment(opts.augment), seed=opts.seed,
                       parity=parity, blend=blend, blend_from=blend_from, donors=donors,
                       autoencoder=autoencoder, recon_from=recon_from)


def _load_teachers(paths: tuple[str, ...], policy, preprocess, device: str) -> tuple[list[MFCLIP], tuple[str, ...]]:
    """The frozen teacher models (eval mode, float32) and the sha256 of their files, in the order given.

    A teacher must read faces exactly as the student does (crop policy and preprocessing), since it scores the
    student's own training inputs; anything else is refused before training starts.
    """
    teachers, shas = [], []
    for p in paths:  # run_training has already refused missing files
        teacher, meta = load_checkpoint(p, device=device)
        seen = meta.input
        if seen is None or seen.preprocess != preprocess or seen.crop != policy:
            raise MfclipError(
                f"teacher {p} reads faces differently from this run (teacher: "
                f"{None if seen is None else seen.to_json()}; run: {InputSpec(policy, preprocess).to_json()}); "
                "train the student with the teacher's crop and preprocessing flags")
        teacher.float().eval().requires_grad_(False)
        teachers.append(teacher)
        shas.append(meta.sha256)
    return teachers, tuple(shas)


@torch.no_grad()
def _teacher_p(teachers: list[MFCLIP], image: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The teachers' mean P(fake) per sample."""
    return torch.stack([t.predict_proba(image, noise).float() for t in teachers]).mean(dim=0)


def _train_epoch(opts: TrainOptions, trainer: _Trainer, loader: DataLoader, entries: list[CropEntry], epoch: int,
                 device: str, callback: Callback) -> tuple[dict[str, float], int]:
    """One pass over the loader (at most ``--max-steps`` optimizer steps): summed loss terms, images seen."""
    model, optimizer, scaler = trainer.model, trainer.optimizer, trainer.scaler
    sums = {"loss": 0.0, "contrastive_loss": 0.0, "kl_loss": 0.0, "ce_loss": 0.0}
    seen, steps = 0, 0
    n_batches = len(loader) if opts.max_steps is None else min(len(loader), opts.max_steps * opts.accum)
    callback("epoch_start", {"epoch": epoch, "batches": n_batches})
    optimizer.zero_grad(set_to_none=True)
    for b, (image, noise, y, idx) in enumerate(loader):
        if b >= n_batches:
            break
        lbl = [entries[i].record.label for i in idx.tolist()]
        image, noise, y = image.to(device, non_blocking=True), noise.to(device, non_blocking=True), y.to(device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=trainer.use_amp):
            teacher_p = _teacher_p(trainer.teachers, image, noise) if trainer.teachers else None
            out = model(image, noise, lbl)
            terms = trainer.loss_fn(out, y, _prompt_ids(unwrap(model), lbl), teacher_p=teacher_p,
                                    teacher_weight=opts.distill_weight)
        loss = terms["loss"] / opts.accum
        if not torch.isfinite(terms["loss"]):
            raise MfclipError(f"training diverged at epoch {epoch} batch {b} (loss {float(terms['loss'])}); "
                              f"lower --lr")
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        if (b + 1) % opts.accum == 0 or b + 1 == n_batches:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            if trainer.averaged is not None and epoch >= trainer.average_from:
                _follow(trainer.averaged, unwrap(model))
        n = len(idx)
        seen += n
        for k in sums:
            sums[k] += float(terms[k].detach()) * n
        callback("step", {"epoch": epoch, "batch": b, "step": steps, "loss": float(terms["loss"].detach())})
    trainer.scheduler.step()
    return sums, seen


def _test_scores(opts: TrainOptions, split: ProtocolSplit, data: _Data, best_ckpt: Path, state: RunState,
                 run_dir: Path, device: str, callback: Callback) -> dict[str, Any]:
    """The best checkpoint's metrics on each test set (test_metrics.json), and the training curves."""
    _plot_curves(state.history, run_dir)
    best_model, best_meta = load_checkpoint(best_ckpt, device=device)
    thr = best_meta.decision_threshold().value
    tests: dict[str, Any] = {}
    for name, ents in data.tests.items():
        if not ents:
            continue
        scores = score_entries(best_model, ents, batch_size=opts.batch_size, device=device)
        tests[name] = report_for_set(name, ents, scores, thr, bootstrap=opts.bootstrap, seed=opts.seed,
                                     n_skipped=len(split.tests[name]) - len(ents)).to_dict()
    atomic_write_json(run_dir / "test_metrics.json", jsonable(tests))
    callback("tests", tests)
    return tests


def _early_stop_agreed(distributed: bool, stop: bool, device: str) -> bool:
    """Rank 0's early-stop decision, broadcast to every rank (a collective: all ranks call it each epoch)."""
    if not distributed:
        return stop
    flag = torch.tensor([1 if stop else 0], device=device)
    torch.distributed.broadcast(flag, src=0)
    return bool(flag.item())


def _plot_curves(history: list[dict[str, Any]], run_dir: Path) -> None:
    if not history:
        return
    from ..plots import plot_training_curves

    try:
        plot_training_curves(history, run_dir / "curves.png")
    except Exception as exc:  # noqa: BLE001 - a plot never fails a finished training run
        import warnings

        warnings.warn(f"could not draw {run_dir / 'curves.png'}: {exc}", stacklevel=2)
