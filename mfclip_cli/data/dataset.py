"""Torch datasets over cached crops: streaming (one file per item), augmentation and richest patch in workers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..model.preprocess import PreprocessConfig, prepare_batch
from .crops import CropEntry, load_crop
from .transforms import TrainAugment, get_perturbation


class CropDataset(Dataset):
    """Items: (image (3,S,S), noise (3,S/g,S/g), y, index). Augmentation is seeded by (seed, epoch, index)."""

    def __init__(self, entries: list[CropEntry], pre: PreprocessConfig, augment: TrainAugment | None = None,
                 seed: int = 0, perturbation: str | Callable[[np.ndarray], np.ndarray] | None = None):
        self.entries = entries
        self.pre = pre
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        # a name from transforms.PERTURBATIONS, or any RGB -> RGB callable (eval's --standardize pipeline)
        self.perturb = get_perturbation(perturbation) if isinstance(perturbation, str) else perturbation

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        entry = self.entries[index]
        crop = load_crop(entry.crop_path)
        if crop.shape[:2] != (self.pre.size, self.pre.size):
            import cv2

            crop = cv2.resize(crop, (self.pre.size, self.pre.size), interpolation=cv2.INTER_AREA)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            crop = self.augment(crop, rng)
        if self.perturb is not None:
            crop = self.perturb(crop)
        image, noise = prepare_batch([np.ascontiguousarray(crop)], self.pre)
        return torch.from_numpy(image[0]), torch.from_numpy(noise[0]), entry.record.y, index
