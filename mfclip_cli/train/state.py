"""What lets a run resume: optimizer, scheduler and scaler state as safetensors (never a pickle), and the metrics so far."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..fsutil import atomic_write_bytes

STATE_FORMAT = 1


# --- optimizer state as safetensors (no pickles) ---------------------------------------------------------------
def save_state(path: Path, optimizer: torch.optim.Optimizer, scheduler, meta: dict[str, Any],
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


def load_state(path: Path, optimizer: torch.optim.Optimizer, scheduler, scaler) -> dict[str, Any]:
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



def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
