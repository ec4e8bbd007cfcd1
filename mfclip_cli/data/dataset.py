"""Torch datasets over cached crops: streaming (one file per item), augmentation and richest patch in workers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..faces.types import CropPolicy, Face
from ..model.preprocess import PreprocessConfig, prepare_batch
from .crops import CropEntry, load_crop
from .transforms import ParityChain, SelfBlend, TrainAugment, get_perturbation


def recut_with_parity(path: str, face: Face, policy: CropPolicy, chain: ParityChain,
                      rng: np.random.Generator) -> np.ndarray:
    """The face crop of ``path`` cut again after the parity chain resized and re-encoded the whole file."""
    from ..faces import align_crop
    from ..media import decode_image

    image = decode_image(path)
    out, (sx, sy) = chain(image, max(face.width, face.height), rng)

    def mapx(x: float) -> float:
        return (x + 0.5) * sx - 0.5

    def mapy(y: float) -> float:
        return (y + 0.5) * sy - 0.5

    x1, y1, x2, y2 = face.box
    moved = Face(box=(mapx(x1), mapy(y1), mapx(x2), mapy(y2)), score=face.score,
                 landmarks=None if face.landmarks is None else tuple((mapx(x), mapy(y)) for x, y in face.landmarks))
    return align_crop(out, moved, policy)


class CropDataset(Dataset):
    """Items: (image (3,S,S), noise (3,S/g,S/g), y, index). Augmentation is seeded by (seed, epoch, index).

    With ``parity`` (a chain and the crop policy), an entry that carries its face geometry is cut again from
    its file after the chain, every time it is read; entries without geometry use their cached crop.
    """

    def __init__(self, entries: list[CropEntry], pre: PreprocessConfig, augment: TrainAugment | None = None,
                 seed: int = 0, perturbation: str | Callable[[np.ndarray], np.ndarray] | None = None,
                 parity: tuple[ParityChain, CropPolicy] | None = None, fixed_epoch: int | None = None,
                 blend: SelfBlend | None = None, blend_from: int | None = None,
                 donors: dict[int, CropEntry] | None = None, autoencoder=None, recon_from: int | None = None):
        self.entries = entries
        self.pre = pre
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.parity = parity
        self.fixed_epoch = fixed_epoch  # validation: the same draws every epoch
        # entries from index ``blend_from`` on are self-blended pseudo-fakes made from real crops
        self.blend = blend
        self.blend_from = len(entries) if blend_from is None else blend_from
        # of those, entries listed here are swap pseudo-fakes: the donor's inner face pasted onto the crop
        self.donors = donors or {}
        # entries from ``recon_from`` on (after the blended ones) are the autoencoder's reconstructions
        self.autoencoder = autoencoder
        self.recon_from = len(entries) if recon_from is None else recon_from
        # a name from transforms.PERTURBATIONS, or any RGB -> RGB callable (eval's --standardize pipeline)
        self.perturb = get_perturbation(perturbation) if isinstance(perturbation, str) else perturbation

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _sized(self, crop: np.ndarray) -> np.ndarray:
        if crop.shape[:2] == (self.pre.size, self.pre.size):
            return crop
        import cv2

        return cv2.resize(crop, (self.pre.size, self.pre.size), interpolation=cv2.INTER_AREA)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        entry = self.entries[index]
        epoch = self.epoch if self.fixed_epoch is None else self.fixed_epoch
        rng = np.random.default_rng([self.seed, epoch, index])
        if self.parity is not None and entry.face is not None:
            chain, policy = self.parity
            crop = recut_with_parity(entry.record.path, entry.face, policy, chain, rng)
        else:
            crop = load_crop(entry.crop_path)
        crop = self._sized(crop)
        if self.autoencoder is not None and index >= self.recon_from:
            from .autoencoder import reconstruct

            crop = reconstruct(self.autoencoder, crop)
        elif self.blend is not None and index >= self.blend_from:
            donor = self.donors.get(index)
            if donor is not None:
                donor = self._sized(load_crop(donor.crop_path))
            crop = self.blend(crop, rng, donor)
        if self.augment is not None:
            crop = self.augment(crop, rng)
        if self.perturb is not None:
            crop = self.perturb(crop)
        image, noise = prepare_batch([np.ascontiguousarray(crop)], self.pre)
        return torch.from_numpy(image[0]), torch.from_numpy(noise[0]), entry.record.y, index
