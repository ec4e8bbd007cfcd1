"""What the loader draws: pseudo-fakes made from training reals (self-blended, swap-blended, autoencoder
reconstructions) and source-balanced weights."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.crops import CropEntry
from ..errors import MfclipError
from .options import Callback

PSEUDO_FAKE_KINDS = ("sbi", "sbi-soft", "swap", "ae")
SBI_SHARE = 0.25  # self-blended pseudo-fakes per training real
SWAP_SHARE = 0.25  # swap-blended pseudo-fakes per training real
AE_SHARE = 0.25  # autoencoder reconstructions per training real
AE_STEPS = 400  # autoencoder training steps (16 patches of 64 px each; about 3 min on 2 cores)


def pseudo_fake_kinds(name: str) -> tuple[str, ...]:
    """The kinds named by a --pseudo-fakes value ("none" or kinds joined by "+"); an unknown one is an error."""
    if name == "none":
        return ()
    kinds = tuple(k.strip() for k in name.split("+"))
    bad = [k for k in kinds if k not in PSEUDO_FAKE_KINDS]
    if bad or len(set(kinds)) != len(kinds) or {"sbi", "sbi-soft"} <= set(kinds):
        raise MfclipError(f"unknown --pseudo-fakes {name!r}; valid: none, or any of "
                          f"{', '.join(PSEUDO_FAKE_KINDS)} joined by '+' (e.g. sbi+swap; "
                          "sbi and sbi-soft exclude each other)")
    return kinds


def _relabelled_copies(reals: list[CropEntry], seed: int, stream: int, share: float, label, source: str,
                       prefix: str) -> list[CropEntry]:
    """Copies of a seeded ``share`` of the real entries under a fake ``label``, ``source`` and group prefix."""
    from dataclasses import replace

    rng = np.random.default_rng([seed, stream])
    pick = sorted(rng.choice(len(reals), size=round(share * len(reals)), replace=False).tolist())
    return [replace(reals[i], record=replace(reals[i].record, label=label, source=source,
                                             group=f"{prefix}:{reals[i].record.group}")) for i in pick]


def reconstructed_entries(reals: list[CropEntry], seed: int) -> list[CropEntry]:
    """Copies of a seeded ``AE_SHARE`` of the real entries relabelled as autoencoder reconstructions."""
    from ..data.taxonomy import Label

    return _relabelled_copies(reals, seed, 17, AE_SHARE, Label.fake("entire_synthesis", "unknown", "autoencoder"),
                              "ae_reconstructed", "ae")


def autoencoder_for(run_dir: Path, reals: list[CropEntry], seed: int, callback: Callback):
    """The run's autoencoder: loaded from the run folder (resume), else trained on the real crops and saved."""
    from ..data.autoencoder import load_autoencoder, save_autoencoder, train_autoencoder
    from ..data.crops import load_crop

    path = run_dir / "autoencoder.safetensors"
    if path.is_file():
        return load_autoencoder(path)
    callback("stage", {"what": "autoencoder", "reals": len(reals)})
    model = train_autoencoder([(lambda p=e.crop_path: load_crop(p)) for e in reals], steps=AE_STEPS, seed=seed)
    save_autoencoder(model, path)
    return model


def self_blended_entries(reals: list[CropEntry], seed: int) -> list[CropEntry]:
    """Copies of a seeded ``SBI_SHARE`` of the real entries relabelled as self-blended face-swap fakes."""
    from ..data.taxonomy import Label

    return _relabelled_copies(reals, seed, 7, SBI_SHARE, Label.fake("face_swap", "unknown", "self-blended"),
                              "self_blended", "sbi")


def swap_blended_entries(reals: list[CropEntry], seed: int) -> tuple[list[CropEntry], list[CropEntry]]:
    """Copies of a seeded ``SWAP_SHARE`` of the real entries relabelled as swap-blended face-swap fakes, and
    for each its donor: another real of a different group (another person or photo), drawn with the seed."""
    from dataclasses import replace

    from ..data.taxonomy import Label

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
