"""What `mfclip train` is asked (:class:`TrainOptions`, saved as config.json) and what a run gives back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..events import EventHook, no_event


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
    fpr_per_source: bool = False  # with target_fpr: the rate holds for every real source, not only pooled
    # none, or "+"-joined kinds of pseudo-fakes made from a quarter of the training reals each: sbi (self-blended),
    # swap (another real's inner face pasted in), ae (reconstructed by an autoencoder trained on the reals)
    pseudo_fakes: str = "none"
    # the weights that are validated and saved: off (the optimizer's) | swa (equal average after every step from
    # the second pass on) | ema (exponential moving average, same start)
    weight_average: str = "off"
    # knowledge distillation: checkpoints whose mean P(fake) on each training input, as the student sees it, takes
    # ``distill_weight`` of the classification loss's share from the hard labels (they must read faces alike)
    teachers: tuple[str, ...] = ()
    distill_weight: float = 0.5
    # the fakes trained on: all (the dataset's and the pseudo-fakes) | pseudo (only the pseudo-fakes made from the
    # training reals; the dataset's fakes stay in validation and test)
    train_fakes: str = "all"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("test_generators", "train_generators", "teachers"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TrainOptions:
        d = dict(d)
        for k in ("test_generators", "train_generators", "teachers"):
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


Callback = EventHook  # the one hook type of every verb (mfclip_cli.events)
no_callback = no_event


BALANCES = ("none", "sources")
WEIGHT_AVERAGES = ("off", "swa", "ema")
TRAIN_FAKES = ("all", "pseudo")
