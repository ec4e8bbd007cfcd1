"""`mfclip train`: protocols -> cached face crops -> MFCLIP training (SPEC §5) -> run directory.

Run directory: config.json, manifest.csv (+ per-split CSVs), skipped.csv, metrics.jsonl, last.safetensors
+ last_state.safetensors (resume), best.safetensors (threshold chosen on validation), curves.png,
test_metrics.json. Everything is written atomically; `--resume RUN_DIR` continues after a crash.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import __version__
from .data.crops import CropCache, CropEntry, SkippedEntry, prepare_crops
from .data.dataset import CropDataset
from .data.layouts import read_dataset
from .data.manifest import manifest_sha256, write_manifest_csv
from .data.protocols import ProtocolSplit, make_protocol, write_split_files
from .data.transforms import parity_chain, train_augment
from .decision import choose_threshold, override_crop
from .errors import MfclipError
from .evaluate import report_for_set, score_entries
from .faces.types import CropPolicy
from .fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text, jsonable
from .metrics import binary_metrics
from .model import MFCLIPLoss, build_model, load_checkpoint, load_preset, save_checkpoint
from .model.config import ModelConfig
from .model.metadata import CheckpointMeta, InputSpec, TaxonomyRecord, ThresholdRecord, TrainingRecord
from .model.mfclip import MFCLIP
from .paths import cache_dir

STATE_FORMAT = 1


@dataclass(frozen=True)
class TrainOptions:
    """Everything a training run depends on (saved as config.json; --resume reloads it)."""

    data: str
    out: str
    protocol: str = "in-domain"
    layout: str = "auto"
    test_generators: tuple[str, ...] | None = None
    train_generators: tuple[str, ...] | None = None
    train_kind: str | None = None
    test_data: str | None = None
    preset: str = "effnet-lite0"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 24
    lr: float = 1e-4
    weight_decay: float = 1e-3
    lr_step: int = 15
    lr_gamma: float = 0.1
    patience: int = 5
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    accum: int = 1
    amp: bool = True
    crop: str = "retinaface"
    crop_margin: float | None = None
    val_frac: float = 0.1
    test_frac: float = 0.2
    max_steps: int | None = None  # cap on optimizer steps per epoch (quick runs)
    freeze_image: bool = False
    freeze_text: bool = False
    online: bool = False
    run: int | None = None  # multi-run protocols (leave-source-out): only this run (1-based)
    bootstrap: int = 200  # resamples for the test sets' AUC 95% CI (0 = off)
    augment: str = "default"  # training augmentation: default | strong | light (data.transforms.train_augment)
    parity: str = "off"  # resize -> JPEG history re-drawn per image before cropping: off | on (transforms)
    balance: str = "none"  # training sampler: none (shuffle) | sources (classes halved, sources tempered)
    target_fpr: float | None = None  # threshold: this false-positive rate on validation reals (None: EER)
    pseudo_fakes: str = "none"  # none | sbi: self-blended copies of a quarter of the training reals, as fakes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("test_generators", "train_generators"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TrainOptions:
        d = dict(d)
        for k in ("test_generators", "train_generators"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return TrainOptions(**d)


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    contrastive_loss: float
    kl_loss: float
    ce_loss: float
    val_loss: float
    val_auc: float | None
    val_acc: float
    threshold: float
    lr: float
    seconds: float
    images_per_s: float


@dataclass(frozen=True)
class TrainResult:
    run_dir: str
    best_checkpoint: str
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    threshold: float
    tests: dict[str, Any]
    skipped: int


Callback = Callable[[str, dict[str, Any]], None]


def _noop(event: str, payload: dict[str, Any]) -> None:
    return None


# --- setup ---------------------------------------------------------------------------------------------------
def crop_policy_for(opts: TrainOptions, size: int) -> CropPolicy:
    """The crop policy training saves: the default policy for ``opts.crop`` < ``--crop-margin``."""
    if opts.crop == "none":
        return CropPolicy.none(size)
    return override_crop(CropPolicy(detector=opts.crop, size=size), margin=opts.crop_margin)


def model_config_for(opts: TrainOptions) -> ModelConfig:
    """Preset < explicit overrides (CLI flags)."""
    return load_preset(opts.preset).with_overrides(**opts.model_overrides)


def resolve_splits(opts: TrainOptions) -> list[ProtocolSplit]:
    records = read_dataset(opts.data, opts.layout)
    kw: dict[str, Any] = {"seed": opts.seed}
    if opts.protocol in ("in-domain", "cross-generator", "cross-forgery"):
        kw.update(val=opts.val_frac, test=opts.test_frac)
    if opts.protocol == "cross-generator":
        kw.update(test_generators=list(opts.test_generators) if opts.test_generators else None,
                  train_generators=list(opts.train_generators) if opts.train_generators else None)
    elif opts.protocol == "cross-forgery":
        if not opts.train_kind:
            raise MfclipError("--protocol cross-forgery needs --train-kind KIND")
        kw["train_kind"] = opts.train_kind
    elif opts.protocol == "cross-dataset":
        if not opts.test_data:
            raise MfclipError("--protocol cross-dataset needs --test-data ROOT2")
        kw.update(test_records=read_dataset(opts.test_data, "auto"), val=opts.val_frac)
    elif opts.protocol == "leave-source-out":
        kw.update(val=opts.val_frac)
    return make_protocol(opts.protocol, records, **kw)


BALANCES = ("none", "sources")
PSEUDO_FAKES = ("none", "sbi", "sbi+swap")
SBI_SHARE = 0.25  # self-blended pseudo-fakes per training real
SWAP_SHARE = 0.25  # swap-blended pseudo-fakes per training real (sbi+swap)


def self_blended_entries(reals: list[CropEntry], seed: int) -> list[CropEntry]:
    """Copies of a seeded ``SBI_SHARE`` of the real entries relabelled as self-blended face-swap fakes."""
    from dataclasses import replace

    from .data.taxonomy import Label

    label = Label.fake("face_swap", "unknown", "self-blended")
    rng = np.random.default_rng([seed, 7])
    pick = sorted(rng.choice(len(reals), size=round(SBI_SHARE * len(reals)), replace=False).tolist())
    return [replace(reals[i], record=replace(reals[i].record, label=label, source="self_blended",
                                             group=f"sbi:{reals[i].record.group}")) for i in pick]


def swap_blended_entries(reals: list[CropEntry], seed: int) -> tuple[list[CropEntry], list[CropEntry]]:
    """Copies of a seeded ``SWAP_SHARE`` of the real entries relabelled as swap-blended face-swap fakes, and
    for each its donor: another real of a different group (another person or photo), drawn with the seed."""
    from dataclasses import replace

    from .data.taxonomy import Label

    label = Label.fake("face_swap", "unknown", "swap-blended")
    rng = np.random.default_rng([seed, 11])
    n = len(reals)
    pick = sorted(rng.choice(n, size=round(SWAP_SHARE * n), replace=False).tolist())
    fakes, donors = [], []
    for i in pick:
        j = int(rng.integers(n))
        while n > 1 and reals[j].record.group == reals[i].record.group:
            j = int(rng.integers(n))
        fakes.append(replace(reals[i], record=replace(reals[i].record, label=label, source="swap_blended",
                                                      group=f"swap:{reals[i].record.group}")))
        donors.append(reals[j])
    return fakes, donors


def source_balanced_weights(entries: list[CropEntry]) -> np.ndarray:
    """Sampling weights that give each class half of the draws and, within a class, each source a share
    growing with the square root of its size (tempered: a 22-image source is not repeated 30 times)."""
    keys = [(e.record.y, e.record.source) for e in entries]
    n_source: dict[tuple[int, str], int] = {}
    for k in keys:
        n_source[k] = n_source.get(k, 0) + 1
    raw = np.array([1.0 / math.sqrt(n_source[k]) for k in keys])
    for y in (0, 1):
        cls = np.array([k[0] == y for k in keys])
        if cls.any():
            raw[cls] *= 0.5 / raw[cls].sum()
    return raw / raw.sum()


def pick_device(name: str) -> str:
    from .runtime import resolve_device

    return resolve_device(name)


_IMAGE_HEAD_NAMES = ("head", "proj")


def _freeze(model: MFCLIP, opts: TrainOptions) -> None:
    """--freeze-image freezes the image backbone (its projection to D stays trainable); --freeze-text the FLE."""
    if opts.freeze_image and model.visual is not None:
        for name, p in model.visual.named_parameters():
            if not name.split(".")[0] in _IMAGE_HEAD_NAMES:
                p.requires_grad_(False)
    if opts.freeze_text and model.text is not None:
        for p in model.text.parameters():
            p.requires_grad_(False)


# --- optimizer state as safetensors (no pickles) ---------------------------------------------------------------
def _save_state(path: Path, optimizer: torch.optim.Optimizer, scheduler, meta: dict[str, Any],
                scaler: torch.amp.GradScaler | None) -> None:
    from safetensors.torch import save

    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            t = val if torch.is_tensor(val) else torch.tensor(val)
            tensors[f"opt.{idx}.{name}"] = t.detach().cpu().contiguous()
    if not tensors:
        tensors["empty"] = torch.zeros(1)
    full = dict(meta, state_format=STATE_FORMAT, param_groups=sd["param_groups"],
                scheduler=scheduler.state_dict(), scaler=scaler.state_dict() if scaler is not None else None)
    atomic_write_bytes(path, save(tensors, metadata={"mfclip_state": json.dumps(full, default=float)}))


def _load_state(path: Path, optimizer: torch.optim.Optimizer, scheduler, scaler) -> dict[str, Any]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["mfclip_state"])
    tensors = load_file(str(path))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, val in tensors.items():
        if not key.startswith("opt."):
            continue
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = val
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return meta


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


def _rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


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


def _set_train_mode(model: MFCLIP, opts: TrainOptions) -> None:
    """train() everywhere, except a frozen image backbone, whose BatchNorm statistics must not drift."""
    model.train()
    if opts.freeze_image and model.visual is not None:
        trunk = getattr(model.visual, "trunk", None)
        (trunk if trunk is not None else model.visual).eval()


def _unwrap(model: torch.nn.Module) -> MFCLIP:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


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
              callback: Callback = _noop, kill_after_epoch: int | None = None) -> TrainResult:
    """Train one protocol split into ``run_dir`` (resuming from its last state when ``resume``)."""
    torch.manual_seed(opts.seed)
    np.random.seed(opts.seed % (2**32))
    device = pick_device(opts.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = _rank()
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
    _freeze(model, opts)
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
        meta = _load_state(state_path, optimizer, scheduler, scaler)
        start_epoch = meta["epoch"] + 1
        best_loss, best_epoch, bad_epochs = meta["best_val_loss"], meta["best_epoch"], meta["bad_epochs"]
        threshold = meta["threshold"]
        history = _read_metrics(run_dir / "metrics.jsonl")[:start_epoch]
        callback("resumed", {"epoch": start_epoch})

    parity = None if chain is None else (chain, policy)
    blend, blend_from, donors = None, None, {}
    if opts.pseudo_fakes in ("sbi", "sbi+swap"):
        from .data.transforms import SelfBlend
        from .faces import template_in_crop

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
    _set_train_mode(_unwrap(model), opts)
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
                terms = loss_fn(out, y, _prompt_ids(_unwrap(model), lbl))
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
        core = _unwrap(model)
        val_loss, val_scores, val_labels = _validate(core, loss_fn, val_loader, val_e, device)
        _set_train_mode(core, opts)
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
        _save_state(state_path, optimizer, scheduler,
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



def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plot_curves(history: list[dict[str, Any]], run_dir: Path) -> None:
    if not history:
        return
    from .plots import plot_training_curves

    try:
        plot_training_curves(history, run_dir / "curves.png")
    except Exception as exc:  # noqa: BLE001 - a plot never fails a finished training run
        import warnings

        warnings.warn(f"could not draw {run_dir / 'curves.png'}: {exc}", stacklevel=2)


# --- driver --------------------------------------------------------------------------------------------------
def run_training(opts: TrainOptions, *, resume: bool = False, callback: Callback = _noop,
                 kill_after_epoch: int | None = None) -> list[TrainResult]:
    """Train every run of the protocol (one for most; one per held-out pair for leave-source-out)."""
    train_augment(opts.augment)  # unknown names fail before anything is written
    parity_chain(opts.parity)
    if opts.pseudo_fakes not in PSEUDO_FAKES:
        raise MfclipError(f"unknown --pseudo-fakes {opts.pseudo_fakes!r}; valid: {', '.join(PSEUDO_FAKES)}")
    if opts.balance not in BALANCES:
        raise MfclipError(f"unknown --balance {opts.balance!r}; valid: {', '.join(BALANCES)}")
    if opts.target_fpr is not None and not 0.0 < opts.target_fpr < 1.0:
        raise MfclipError(f"--target-fpr must be between 0 and 1, got {opts.target_fpr}")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    if not resume and _rank() == 0:  # under torchrun rank 0 alone writes; the others would see its file
        existing = out / "config.json"
        # a run that failed before its first checkpoint (bad data, Ctrl-C while cropping) left only its
        # config: nothing to resume or lose, so a rerun starts over instead of being blocked
        if existing.exists() and any(out.rglob("*.safetensors")):
            raise MfclipError(f"{out} already holds a training run; use --resume {out} or another --out")
        atomic_write_json(out / "config.json", {"options": opts.to_dict(),
                                                "model": model_config_for(opts).to_dict(),
                                                "mfclip": __version__})
    splits = resolve_splits(opts)
    if opts.run is not None:
        if not 1 <= opts.run <= len(splits):
            raise MfclipError(f"--run must be between 1 and {len(splits)} for this protocol")
        chosen = [(opts.run, splits[opts.run - 1])]
    else:
        chosen = list(enumerate(splits, start=1))
    results = []
    for i, split in chosen:
        run_dir = out if len(splits) == 1 else out / f"run-{i}"
        callback("run_start", {"run": i, "of": len(splits), "name": split.name, "dir": str(run_dir)})
        done = (run_dir / "test_metrics.json").is_file()
        if resume and done:
            continue
        results.append(train_one(opts, split, run_dir, resume=resume, callback=callback,
                                 kill_after_epoch=kill_after_epoch))
    if len(splits) > 1:
        atomic_write_json(out / "summary.json", summarize_runs(out, len(splits)))
    return results


def summarize_runs(out: Path, n: int) -> dict[str, Any]:
    """Mean and per-run 'all' AUC over the runs of a multi-run protocol, with a bootstrap-free spread."""
    rows = []
    for i in range(1, n + 1):
        p = out / f"run-{i}" / "test_metrics.json"
        if not p.is_file():
            continue
        for name, rep in json.loads(p.read_text()).items():
            allrow = next(r for r in rep["rows"] if r["name"] == "all")
            rows.append({"run": i, "test": name, "auc": allrow.get("auc"), "acc": allrow.get("acc"),
                         "eer": allrow.get("eer"), "auc_ci": allrow.get("auc_ci")})
    aucs = [r["auc"] for r in rows if r["auc"] is not None]
    return {"runs": rows, "mean_auc": float(np.mean(aucs)) if aucs else None,
            "std_auc": float(np.std(aucs)) if aucs else None}


def load_run_options(run_dir: str | Path) -> TrainOptions:
    """The options a run was started with (for --resume)."""
    p = Path(run_dir) / "config.json"
    if not p.is_file():
        raise MfclipError(f"{run_dir} is not a training run folder (no config.json)")
    return TrainOptions.from_dict(json.loads(p.read_text())["options"])

