"""Detection models (SCRFD / RetinaFace) from the user's own insightface model packs; never downloads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mfclip_cli.errors import WeightsNotFound
from mfclip_cli.faces.types import Face


def insightface_root() -> Path:
    """insightface's model root: $INSIGHTFACE_HOME or ~/.insightface (packs live in <root>/models/<pack>)."""
    return Path(os.environ.get("INSIGHTFACE_HOME") or Path.home() / ".insightface").expanduser()


def find_detection_model(pack_dir: Path) -> Path:
    """The detection .onnx of an insightface pack folder (``det_*.onnx``, or an SCRFD/RetinaFace file)."""
    how_to = (
        f"Put an insightface model pack there (e.g. unzip buffalo_l.zip from the insightface model zoo "
        f"into {pack_dir}, so that {pack_dir / 'det_10g.onnx'} exists), pass another pack or root, "
        f"or use --detector retinaface (shipped)."
    )
    if not pack_dir.is_dir():
        raise WeightsNotFound(f"insightface model folder {pack_dir} does not exist. {how_to}")
    candidates = sorted(pack_dir.glob("det_*.onnx")) or sorted(
        p for p in pack_dir.glob("*.onnx") if "scrfd" in p.name.lower() or "retinaface" in p.name.lower()
    )
    if not candidates:
        raise WeightsNotFound(
            f"insightface model folder {pack_dir} holds no detection model (det_*.onnx). {how_to}"
        )
    return candidates[0]


class InsightFaceDetector:
    """Faces with 5 landmarks from an insightface detection model (buffalo_l's SCRFD-10G by default)."""

    name = "insightface"

    def __init__(
        self,
        pack: str = "buffalo_l",
        root: str | os.PathLike | None = None,
        providers: list[str] | None = None,
        score_threshold: float = 0.5,
        det_size: int = 640,
    ):
        base = Path(root).expanduser() if root is not None else insightface_root()
        self.pack_dir = base / "models" / pack
        self.model_path = find_detection_model(self.pack_dir)
        import onnxruntime as ort

        try:
            from insightface.model_zoo import get_model  # heavy import, only when this backend is used
        except ImportError as exc:
            from mfclip_cli.errors import MfclipError

            raise MfclipError(
                "the insightface detector backend needs the optional package: pip install 'mfclip[insightface]' "
                "(then `pip uninstall -y opencv-python`, which it pulls in beside the headless OpenCV)"
            ) from exc

        from mfclip_cli.faces.retinaface import default_threads

        if providers is None:
            providers = ["CPUExecutionProvider"]
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = default_threads()
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        model = get_model(str(self.model_path), providers=providers, sess_options=opts)
        if model is None or not hasattr(model, "detect"):
            raise WeightsNotFound(
                f"{self.model_path} is not an insightface detection model. Put the pack's det_*.onnx there."
            )
        self.score_threshold = float(score_threshold)
        self.det_size = int(det_size)
        model.prepare(
            ctx_id=-1 if providers[0] == "CPUExecutionProvider" else 0,
            input_size=(self.det_size, self.det_size),
            det_thresh=self.score_threshold,
        )
        self._model = model

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces per RGB uint8 image, highest score first."""
        out = []
        for image in images:
            bgr = np.ascontiguousarray(image[..., ::-1])
            det, kpss = self._model.detect(bgr, input_size=(self.det_size, self.det_size))
            faces = []
            for k in range(det.shape[0]):
                x1, y1, x2, y2, score = (float(v) for v in det[k, :5])
                lm = None
                if kpss is not None:
                    lm = tuple((float(px), float(py)) for px, py in kpss[k][:5])
                faces.append(Face(box=(x1, y1, x2, y2), score=score, landmarks=lm))
            out.append(sorted(faces, key=lambda f: -f.score))
        return out
