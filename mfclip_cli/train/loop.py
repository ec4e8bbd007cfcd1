"""One training run (:func:`train_one`): crops, model, loaders, epochs with validation, checkpoints, test scores."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import __version__
from ..data.crops import CropCache, CropEntry, SkippedEntry, prepare_crops
from ..data.dataset import CropDataset
from ..data.manifest import manifest_sha256, write_manifest_csv
from ..data.protocols import ProtocolSplit, write_split_files
from ..data.transforms import parity_chain, train_augment
from ..decision import choose_threshold
from ..errors import MfclipError
from ..evaluate import report_for_set, score_entries
from ..fsutil import atomic_write_json, atomic_write_text, jsonable
from ..metrics import binary_metrics
from ..model import MFCLIPLoss, build_model, load_checkpoint, save_checkpoint
from ..model.metadata import CheckpointMeta, InputSpec, TaxonomyRecord, ThresholdRecord, TrainingRecord
from ..model.mfclip import MFCLIP
from ..paths import cache_dir
from ..runtime import resolve_device
from .options import Callback, EpochLog, TrainOptions, TrainResult, no_callback
from .sampling import self_blended_entries, source_balanced_weights, swap_blended_entries
from .setup import crop_policy_for, freeze_towers, model_config_for, process_rank, set_train_mode, unwrap
from .state import load_state, read_metrics, save_state


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




def _test_kill_point() -> tuple[int, int] | None:
    """(epoch, step) from $MFCLIP_TEST_KILL_AT="E:S": the test hook that SIGKILLs a run mid-epoch."""
    text = os.environ.get("MFCLIP_TEST_KILL_AT")
    if not text:
        return None
    epoch, step = (int(x) for x in text.split(":"))
    return epoch, step


def _env_kill_after_epoch() -> int | None:
    text = os.environ.get("MFCLIP_TEST_KILL_AFTER_EPOCH")
    return int(text) if text else None


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


def train_one(opts: TrainOptions, split: ProtocolSplit, run_dir: Path, *, resume: bool = False,
              callback: Callback = no_callback, kill_after_epoch: int | None = None) -> TrainResult:
    """Train one protocol split into ``run_dir`` (resuming from its last state when ``resume``)."""
    torch.manual_seed(opts.seed)
    np.random.seed(opts.seed % (2**32))
    device = resolve_device(opts.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = process_rank()
    if kill_after_epoch is None:
        kill_after_epoch = _env_kill_after_epoch()
    kill_at = _test_kill_point()
    distributed = world > 1
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
    main_proc = rank == 0
    run_dir.mkdir(parents=True, exist_ok=True)

    cfg = model_config_for(opts)
    policy = crop_policy_for(opts, cfg.preprocess.size)
    cache = CropCache(cache_dir() / "crops", policy)
    all_records = split.train + split.val + [r for recs in split.tests.values() for r in recs]
    callback("crops_start", {"total": len(all_records)})
    chain = parity_chain(opts.parity)
    entries, skipped = prepare_crops(all_records, policy, cache, workers=opts.workers,
                                     on_done=lambda: callback("crop_done", {}), geometry=chain is not None)
    by_path = {e.record.path: e for e in entries}
    train_e = [by_path[r.path] for r in split.train if r.path in by_path]
    val_e = [by_path[r.path] for r in split.val if r.path in by_path]
    tests_e = {name: [by_path[r.path] for r in recs if r.path in by_path] for name, recs in split.tests.items()}
    if main_proc:
        write_manifest_csv(all_records, run_dir / "manifest.csv")
        write_split_files(split, run_dir)
        _write_skipped(run_dir / "skipped.csv", skipped)
    callback("data", {"train": len(train_e), "val": len(val_e),
                      "tests": {k: len(v) for k, v in tests_e.items()}, "skipped": len(skipped)})
    if len({e.record.y for e in train_e}) < 2 or len({e.record.y for e in val_e}) < 2:
        raise MfclipError("after cropping, train or validation lacks one class; see skipped.csv in the run folder")

    model = build_model(cfg, online=opts.online, seed=opts.seed)
    freeze_towers(model, opts)
    model.to(device)
    loss_fn = MFCLIPLoss(cfg.loss)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=opts.lr, weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=opts.lr_step, gamma=opts.lr_gamma)
    use_amp = opts.amp and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    start_epoch, best_loss, best_epoch, bad_epochs, threshold = 0, math.inf, -1, 0, 0.5
    last_ckpt, state_path, best_ckpt = run_dir / "last.safetensors", run_dir / "last_state.safetensors", \
        run_dir / "best.safetensors"
    history: list[dict[str, Any]] = []
    if resume and state_path.is_file() and last_ckpt.is_file():
        saved, _ = load_checkpoint(last_ckpt)
        model.load_state_dict(saved.state_dict())
        model.to(device)
        meta = load_state(state_path, optimizer, scheduler, scaler)
        start_epoch = meta["epoch"] + 1
        best_loss, best_epoch, bad_epochs = meta["best_val_loss"], meta["best_epoch"], meta["bad_epochs"]
        threshold = meta["threshold"]
        history = read_metrics(run_dir / "metrics.jsonl")[:start_epoch]
        callback("resumed", {"epoch": start_epoch})

    parity = None if chain is None else (chain, policy)
    blend, blend_from, donors = None, None, {}
    if opts.pseudo_fakes in ("sbi", "sbi+swap"):
        from ..data.transforms import SelfBlend
        from ..faces import template_in_crop

        blend_from = len(train_e)
        reals = [e for e in train_e if e.record.y == 0]
        train_e = train_e + self_blended_entries(reals, opts.seed)
        if opts.pseudo_fakes == "sbi+swap":
            swaps, swap_donors = swap_blended_entries(reals, opts.seed)
            donors = {len(train_e) + k: d for k, d in enumerate(swap_donors)}
            train_e = train_e + swaps
        blend = SelfBlend(tuple(map(tuple, template_in_crop(policy).tolist())))
    train_ds = CropDataset(train_e, cfg.preprocess, augment=train_augment(opts.augment), seed=opts.seed,
                           parity=parity, blend=blend, blend_from=blend_from, donors=donors)
    sampler = None
    gen = torch.Generator()
    if opts.balance == "sources" and not distributed:
        from torch.utils.data import WeightedRandomSampler

        sampler = WeightedRandomSampler(source_balanced_weights(train_e).tolist(), num_samples=len(train_e),
                                        replacement=True, generator=gen)
    elif distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_ds, shuffle=True, seed=opts.seed, drop_last=cfg.spa == "matrix")
        model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    per_rank = len(sampler) if sampler is not None else len(train_ds)  # a rank's loader sees only its shard
    drop_last = cfg.spa == "matrix" or per_rank > opts.batch_size
    loader = DataLoader(train_ds, batch_size=opts.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=opts.workers, drop_last=drop_last, generator=gen,
                        persistent_workers=False, pin_memory=device.startswith("cuda"))
    # validation sees the training distribution (the parity chain with draws fixed across epochs)
    val_loader = DataLoader(CropDataset(val_e, cfg.preprocess, seed=opts.seed, parity=parity, fixed_epoch=10**6),
                            batch_size=opts.batch_size,
                            num_workers=opts.workers, drop_last=cfg.spa == "matrix" and len(val_e) >= opts.batch_size)
    training = TrainingRecord(
        protocol=opts.protocol, split=split.name, data=str(opts.data),
        manifest_sha256=manifest_sha256(split.train + split.val), seed=opts.seed,
        package_version=__version__, preset=cfg.preset, val_frac=opts.val_frac,
        test_frac=opts.test_frac, augment=opts.augment, parity=opts.parity, balance=opts.balance,
        pseudo_fakes=opts.pseudo_fakes,
        steps_per_epoch=opts.max_steps, image_init=cfg.image_init, freeze_image=opts.freeze_image,
    )
    input_spec = InputSpec(policy, cfg.preprocess)
    # 64-bit content-hash prefixes of every training/validation file: eval's overlap guard compares with them
    train_hashes = sorted({e.sha256[:16] for e in train_e + val_e}) if len(train_e) + len(val_e) <= 500_000 else []
    set_train_mode(unwrap(model), opts)
    epoch = start_epoch - 1
    for epoch in range(start_epoch, opts.epochs):
        t0 = time.monotonic()
        train_ds.set_epoch(epoch)
        gen.manual_seed(opts.seed * 1000 + epoch)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        sums = {"loss": 0.0, "contrastive_loss": 0.0, "kl_loss": 0.0, "ce_loss": 0.0}
        seen, steps = 0, 0
        n_batches = len(loader) if opts.max_steps is None else min(len(loader), opts.max_steps * opts.accum)
        callback("epoch_start", {"epoch": epoch, "batches": n_batches})
        optimizer.zero_grad(set_to_none=True)
        for b, (image, noise, y, idx) in enumerate(loader):
            if b >= n_batches:
                break
            lbl = [train_e[i].record.label for i in idx.tolist()]
            image, noise, y = image.to(device, non_blocking=True), noise.to(device, non_blocking=True), y.to(device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                out = model(image, noise, lbl)
                terms = loss_fn(out, y, _prompt_ids(unwrap(model), lbl))
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
                if kill_at == (epoch, steps):
                    os.kill(os.getpid(), signal.SIGKILL)  # test hook: a hard crash mid-epoch, state unsaved
            n = len(idx)
            seen += n
            for k in sums:
                sums[k] += float(terms[k].detach()) * n
            callback("step", {"epoch": epoch, "batch": b, "loss": float(terms["loss"].detach())})
        scheduler.step()
        train_time = time.monotonic() - t0
        if not main_proc:
            if _early_stop_agreed(distributed, False, device):
                break
            continue
        core = unwrap(model)
        val_loss, val_scores, val_labels = _validate(core, loss_fn, val_loader, val_e, device)
        set_train_mode(core, opts)
        if opts.target_fpr is None:
            thr, thr_info = choose_threshold(val_scores, val_labels, "eer")
        else:
            thr, thr_info = choose_threshold(val_scores, val_labels, "target_fpr", opts.target_fpr)
        m = binary_metrics(val_scores, val_labels, thr)
        log = EpochLog(epoch=epoch, train_loss=sums["loss"] / max(seen, 1),
                       contrastive_loss=sums["contrastive_loss"] / max(seen, 1),
                       kl_loss=sums["kl_loss"] / max(seen, 1), ce_loss=sums["ce_loss"] / max(seen, 1),
                       val_loss=val_loss, val_auc=m.auc, val_acc=m.acc, threshold=thr,
                       lr=optimizer.param_groups[0]["lr"], seconds=time.monotonic() - t0,
                       images_per_s=seen / max(train_time, 1e-9))
        history.append(asdict(log))
        improved = val_loss < best_loss
        if improved:
            best_loss, best_epoch, bad_epochs, threshold = val_loss, epoch, 0, thr
            meta = CheckpointMeta(
                threshold=thr_info, input=input_spec,
                taxonomy=TaxonomyRecord(tuple(sorted({e.record.generator for e in train_e}))),
                training=training.best(epoch=epoch, val=m.to_dict(), val_loss=val_loss,
                                       file_hashes16=tuple(train_hashes)))
            save_checkpoint(best_ckpt, core, meta=meta)  # merges LoRA into a copy, never into `core`
        else:
            bad_epochs += 1
        # last: weights + optimizer state, then metrics, so a crash at any point resumes consistently
        save_checkpoint(last_ckpt, core, merge=False, meta=CheckpointMeta(
            threshold=ThresholdRecord(float(thr), "eer on validation"), input=input_spec, training=training))
        save_state(state_path, optimizer, scheduler,
                    {"epoch": epoch, "best_val_loss": best_loss, "best_epoch": best_epoch,
                     "bad_epochs": bad_epochs, "threshold": threshold}, scaler)
        atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(jsonable(h)) + "\n" for h in history))
        callback("epoch_end", {**asdict(log), "improved": improved})
        if kill_after_epoch is not None and epoch == kill_after_epoch:
            os._exit(137)  # test hook: simulate a crash right after an epoch's state is on disk
        stop = bad_epochs >= opts.patience
        # rank 0 alone validates, so it tells the other ranks when to stop (else they wait in all-reduce)
        if _early_stop_agreed(distributed, stop, device):
            callback("early_stop", {"epoch": epoch})
            break
    if distributed:
        torch.distributed.barrier()
    epochs_run = epoch + 1
    tests: dict[str, Any] = {}
    if main_proc:
        _plot_curves(history, run_dir)
        best_model, best_meta = load_checkpoint(best_ckpt, device=device)
        thr = best_meta.decision_threshold().value
        n_skipped_by_set = {name: len(recs) - len(tests_e[name]) for name, recs in split.tests.items()}
        for name, ents in tests_e.items():
            if not ents:
                continue
            scores = score_entries(best_model, ents, batch_size=opts.batch_size, device=device)
            tests[name] = report_for_set(name, ents, scores, thr, bootstrap=opts.bootstrap, seed=opts.seed,
                                         n_skipped=n_skipped_by_set[name]).to_dict()
        atomic_write_json(run_dir / "test_metrics.json", jsonable(tests))
        callback("tests", tests)
    return TrainResult(str(run_dir), str(best_ckpt), epochs_run, best_epoch, best_loss, threshold, tests,
                       len(skipped))


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
