"""Training throughput on this machine: one optimizer step per preset vs the training data loader alone.

    uv run python benchmarks/train_step.py [--json] [--presets tiny,effnet-lite0] [--loader-images 96]

Model step: forward + MFCLIP loss + backward + Adam step on fixed random tensors (batch 24, half real, half
fake), after warm-up steps. Loader: CropDataset with TrainAugment over cached crops (crop policy 'none')
of the shared face set, num_workers 2, batch 24; the crops are prepared first and not timed. The loader
outruns a preset when it delivers more images/s than that preset's step consumes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mfclip_cli.data.crops import CropCache, prepare_crops
from mfclip_cli.data.dataset import CropDataset
from mfclip_cli.data.layouts import read_dataset
from mfclip_cli.data.taxonomy import Label
from mfclip_cli.data.transforms import TrainAugment
from mfclip_cli.faces.types import CropPolicy
from mfclip_cli.model import MFCLIPLoss, build_model, load_preset

DEFAULT_FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def model_step_images_per_s(preset: str, batch: int, warmup: int, steps: int) -> dict:
    """Images/s of full training steps of ``preset`` on CPU with fixed random inputs."""
    cfg = load_preset(preset)
    model = build_model(cfg, seed=0).train()
    loss_fn = MFCLIPLoss(cfg.loss)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(0)
    size, patch = cfg.preprocess.size, cfg.preprocess.patch_size
    image = torch.randn(batch, 3, size, size, generator=gen)
    noise = torch.rand(batch, 3, patch, patch, generator=gen)
    half = batch // 2
    labels = [Label.real()] * half + [Label.fake("entire_synthesis", "diffusion", "ddpm")] * (batch - half)
    y = torch.tensor([0] * half + [1] * (batch - half))
    prompt_ids = [0] * half + [1] * (batch - half)

    def step() -> None:
        out = model(image, noise, labels)
        loss_fn(out, y, prompt_ids)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - t0
    return {"preset": preset, "batch": batch, "steps": steps, "seconds_per_step": seconds / steps,
            "images_per_s": batch * steps / seconds}


def loader_images_per_s(faces: Path, n_images: int, preset: str, batch: int, workers: int, epochs: int) -> dict:
    """Images/s of the training DataLoader over ``n_images`` cached crops (the first batch, i.e. worker
    start-up, is not timed)."""
    records = read_dataset(faces)
    stride = max(1, len(records) // n_images)
    records = records[::stride][:n_images]
    policy = CropPolicy.none(224)
    cache_root = Path(os.environ.get("MFCLIP_CACHE") or tempfile.mkdtemp(prefix="mfclip-bench-"))
    t0 = time.perf_counter()
    entries, skipped = prepare_crops(records, policy, CropCache(cache_root / "crops", policy), workers=workers)
    prep_seconds = time.perf_counter() - t0
    dataset = CropDataset(entries, load_preset(preset).preprocess, augment=TrainAugment(), seed=0)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=False,
                        generator=torch.Generator().manual_seed(0), persistent_workers=workers > 0)
    seen, t_start = 0, None
    # persistent workers keep their dataset copy at epoch 0, so later epochs repeat the same augmentation
    # draws; the cost per image is what is timed, and it does not depend on the draws' values
    for _ in range(epochs):
        for image, _noise, _y, _idx in loader:
            if t_start is None:
                t_start = time.perf_counter()
                continue
            seen += image.shape[0]
    seconds = time.perf_counter() - t_start if t_start is not None else 0.0
    return {"images": len(entries), "skipped": len(skipped), "crop_prepare_seconds": prep_seconds,
            "workers": workers, "batch": batch, "epochs": epochs, "timed_images": seen,
            "images_per_s": seen / seconds if seconds > 0 else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,effnet-lite0")
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES)
    ap.add_argument("--loader-images", type=int, default=96)
    ap.add_argument("--loader-epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="Print one JSON object instead of the table.")
    args = ap.parse_args()

    steps = [model_step_images_per_s(p.strip(), args.batch, args.warmup, args.steps)
             for p in args.presets.split(",") if p.strip()]
    loader = loader_images_per_s(args.faces, args.loader_images, "effnet-lite0", args.batch, args.workers,
                                 args.loader_epochs)
    for s in steps:
        s["loader_outruns_step"] = loader["images_per_s"] > s["images_per_s"]
    result = {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "model_steps": steps,
              "loader": loader}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"CPU, torch threads {result['torch_threads']} (of {result['cpu_count']} cores), batch {args.batch}")
    for s in steps:
        print(f"  train step {s['preset']:14s} {s['images_per_s']:7.1f} img/s  ({s['seconds_per_step']:.2f} s/step)")
    print(f"  data loader (workers {loader['workers']}, {loader['images']} cached crops, TrainAugment) "
          f"{loader['images_per_s']:7.1f} img/s  (crop prep {loader['crop_prepare_seconds']:.1f} s, untimed)")
    for s in steps:
        verdict = "outruns" if s["loader_outruns_step"] else "does NOT keep up with"
        print(f"  loader {verdict} the {s['preset']} step")


if __name__ == "__main__":
    main()
