"""What `mfclip info` reports: versions, devices, ONNX Runtime providers that really work, weights found."""

from __future__ import annotations

import importlib.metadata as md
import platform
from typing import Any

from . import __version__
from .paths import default_checkpoint, retinaface_model


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def working_ort_providers() -> dict[str, Any]:
    """Providers onnxruntime lists, and those that actually run the shipped detector graph."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"listed": [], "working": [], "error": "onnxruntime is not installed (pip install 'mfclip[cpu]')"}
    listed = ort.get_available_providers()
    working: list[str] = []
    failed: list[str] = []
    model = retinaface_model()
    for prov in listed:
        if prov not in ("CPUExecutionProvider", "CUDAExecutionProvider"):
            continue
        if not model.is_file():
            break
        try:
            sess = ort.InferenceSession(str(model), providers=[prov])
            if sess.get_providers()[0] == prov:
                working.append(prov)
        except Exception as exc:  # noqa: BLE001 - a provider that fails to start is exactly what we report
            failed.append(f"{prov}: {type(exc).__name__}")
    return {"listed": listed, "working": working, "failed": failed}


def collect_info(weights: str | None = None) -> dict[str, Any]:
    """Everything `mfclip info` shows, as plain data."""
    import torch

    cuda = torch.cuda.is_available()
    data: dict[str, Any] = {
        "mfclip": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {d: _version(d) for d in ("torch", "open_clip_torch", "timm", "onnxruntime",
                                               "onnxruntime-gpu", "opencv-python-headless", "insightface", "peft")},
        "torch_threads": torch.get_num_threads(),
        "cuda": {"available": cuda, "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                 if cuda else []},
        "onnxruntime": working_ort_providers(),
    }
    det = retinaface_model()
    data["detector"] = {"path": str(det), "present": det.is_file()}
    ckpt = weights or str(default_checkpoint())
    entry: dict[str, Any] = {"path": ckpt}
    try:
        from .fsutil import sha256_file
        from .model.checkpoint import read_checkpoint_meta

        meta = read_checkpoint_meta(ckpt)
        entry.update(present=True, sha256=sha256_file(ckpt), preset=meta.preset,
                     threshold=None if meta.threshold is None else meta.threshold.to_json(),
                     training=None if meta.training is None else meta.training.protocol)
    except Exception as exc:  # noqa: BLE001 - info reports problems, it does not fail on them
        entry.update(present=False, problem=str(exc))
    data["checkpoint"] = entry
    return data


def render_info(data: dict[str, Any], console) -> None:
    """A readable table of collect_info()."""
    from rich.table import Table

    t = Table(title=f"mfclip {data['mfclip']}", show_header=False)
    t.add_row("python", f"{data['python']} ({data['platform']})")
    for k, v in data["packages"].items():
        if v:
            t.add_row(k, v)
    t.add_row("torch threads", str(data["torch_threads"]))
    t.add_row("CUDA", ", ".join(data["cuda"]["devices"]) if data["cuda"]["available"] else "not available")
    ort = data["onnxruntime"]
    t.add_row("ORT providers (working)", ", ".join(ort.get("working", [])) or ort.get("error", "none"))
    t.add_row("face detector", f"{data['detector']['path']} ({'ok' if data['detector']['present'] else 'MISSING'})")
    c = data["checkpoint"]
    t.add_row("checkpoint", f"{c['path']} ({c.get('preset') or c.get('problem')})")
    console.print(t)
