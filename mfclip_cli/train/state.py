"""What lets a run resume: :class:`RunState` (where the run stands, with the optimizer, scheduler and scaler
state as safetensors, never a pickle) and the metrics of the finished epochs."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..fsutil import atomic_write_bytes, atomic_write_text, jsonable

STATE_FORMAT = 1
STATE_FILE = "last_state.safetensors"
METRICS_FILE = "metrics.jsonl"
_STATE_KEY = "mfclip_state"


@dataclass
class RunState:
    """Where a run stands after its last finished ``epoch`` (-1: none yet): the best validation loss and its
    epoch, the epochs since it improved, the best epoch's threshold, and one metrics row per finished epoch.

    :meth:`save` writes it beside ``last.safetensors`` (the weights) after every epoch; :meth:`load` puts the
    optimizer, scheduler and scaler back where they were, so ``--resume`` continues the same run.
    """

    epoch: int = -1
    best_val_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    threshold: float = 0.5
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def next_epoch(self) -> int:
        return self.epoch + 1

    def record(self, epoch: int, row: dict[str, Any], val_loss: float, threshold: float,
               eligible: bool = True) -> bool:
        """Count a finished epoch (its metrics ``row``); True when its validation loss is the best so far.

        An epoch that is not ``eligible`` (before --weight-average starts) is logged but never the best."""
        self.epoch = epoch
        self.history.append(row)
        if not eligible:
            return False
        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch, self.bad_epochs, self.threshold = val_loss, epoch, 0, threshold
        else:
            self.bad_epochs += 1
        return improved

    def save(self, run_dir: Path, optimizer: torch.optim.Optimizer, scheduler,
             scaler: torch.amp.GradScaler | None) -> None:
        """Write the state file, then the metrics, so a crash at any point leaves a consistent pair."""
        from safetensors.torch import save

        sd = optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        for idx, st in sd["state"].items():
            for name, val in st.items():
                t = val if torch.is_tensor(val) else torch.tensor(val)
                tensors[f"opt.{idx}.{name}"] = t.detach().cpu().contiguous()
        if not tensors:
            tensors["empty"] = torch.zeros(1)
        where = {k: v for k, v in asdict(self).items() if k != "history"}
        full = dict(where, state_format=STATE_FORMAT, param_groups=sd["param_groups"],
                    scheduler=scheduler.state_dict(), scaler=scaler.state_dict() if scaler is not None else None)
        atomic_write_bytes(run_dir / STATE_FILE, save(tensors, metadata={_STATE_KEY: json.dumps(full, default=float)}))
        atomic_write_text(run_dir / METRICS_FILE, "".join(json.dumps(jsonable(h)) + "\n" for h in self.history))

    @staticmethod
    def load(run_dir: Path, optimizer: torch.optim.Optimizer, scheduler,
             scaler: torch.amp.GradScaler | None) -> RunState:
        """The state :meth:`save` wrote in ``run_dir``; the optimizer, scheduler and scaler are restored."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = run_dir / STATE_FILE
        with safe_open(str(path), framework="pt") as fh:
            saved = json.loads(fh.metadata()[_STATE_KEY])
        tensors = load_file(str(path))
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, val in tensors.items():
            if not key.startswith("opt."):
                continue
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = val
        optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        run = RunState(**{f.name: saved[f.name] for f in fields(RunState) if f.name != "history"})
        run.history = read_metrics(run_dir / METRICS_FILE)[:run.next_epoch]
        return run


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl (none when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
