"""Report writers: JSON, CSV and streamed JSONL (atomic where the format allows), explanation pictures."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from mfclip_cli.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text

from .scan import CSV_COLUMNS, FaceResult, ItemResult, ScanResult
from .text import os_reason, safe_text

# --- writers -------------------------------------------------------------------------------------


def write_json(result: ScanResult, path: str | os.PathLike) -> None:
    """Write the report atomically: readers see the old file or the whole new one."""
    atomic_write_json(path, result.to_json())


def _csv_rows(result: ScanResult) -> Iterable[list[Any]]:
    def cell(x: Any) -> Any:
        return "" if x is None else x

    for item in result.items:
        j = item.to_json()
        head = [j["path"], j["kind"], j["status"], (j["error"] or {}).get("code"), j["score"], j["verdict"]]
        tail = [cell(x) for x in [j.get("path_b64"), *_provenance_cells(item)]]
        if not j["faces"]:
            yield [cell(x) for x in head] + [""] * (len(CSV_COLUMNS) - len(head) - len(tail)) + tail
        for k, f in enumerate(j["faces"]):
            yield [
                cell(x) for x in head + [k, f["frame"], f["time_s"], *f["box"], f["det_score"], f["score"]]
            ] + tail


def _provenance_cells(item: ItemResult) -> list[Any]:
    """provenance_status, provenance_generator, c2pa_signer, c2pa_validation, provenance_disagrees."""
    p = item.provenance
    if p is None:
        return [None] * 5
    validation = p.c2pa.validation_state
    if validation is not None and p.c2pa.validation_codes:
        validation += f" ({', '.join(p.c2pa.validation_codes)})"
    return [p.status, safe_text(p.generator) if p.generator else None,
            safe_text(p.c2pa.signer) if p.c2pa.signer else None, validation, int(item.provenance_disagrees)]


def write_csv(result: ScanResult, path: str | os.PathLike) -> None:
    """Write one row per face (an item without faces gets one row with empty face columns), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(_csv_rows(result))
    atomic_write_text(path, buf.getvalue())


class JsonlWriter:
    """Streams one JSON line per item as it finishes (``with JsonlWriter(p) as w: w.write(item)``).

    Unlike the JSON and CSV reports this file grows during the scan, so a reader can follow it; each
    line goes out in unbuffered writes, and a write that fails (full disk) is rolled back to the last
    whole line, so the file only ever holds whole lines. The file is created (truncated unless
    ``append=True``) by :meth:`open` or the first :meth:`write`, never before: a scan that fails or is
    stopped during start-up leaves an older stream untouched.
    """

    def __init__(self, path: str | os.PathLike, append: bool = False):
        self.path = Path(path)
        self.append = append
        self._fh: io.RawIOBase | None = None
        self._end = 0  # bytes of whole lines in the file

    def __enter__(self) -> Self:
        return self

    def open(self) -> None:
        """Create (or truncate, or open for appending) the file now; does nothing when already open."""
        if self._fh is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab" if self.append else "wb", buffering=0)  # noqa: SIM115 - closed by close()
        self._end = self._fh.seek(0, os.SEEK_END)

    def write(self, item: ItemResult) -> None:
        """Append ``item`` as one line; on OSError the partial line is removed and the error re-raised."""
        self.open()
        line = (json.dumps(item.to_json(), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        try:
            self._write_bytes(line)
        except OSError:
            try:
                self._fh.truncate(self._end)
            except OSError:  # the line stays cut; readers skip a last line without its newline
                pass
            raise
        self._end += len(line)

    def _write_bytes(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a raw write may be partial; finish the line before anything else
            view = view[self._fh.write(view) :]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- explanation pictures (--explain-dir) --------------------------------------------------------


class ExplanationWriter:
    """Writes the pictures of each explained face into ``--explain-dir`` as its item finishes (atomic PNGs):
    ``NNNNN_<stem>_faceK_overlay.png`` (crop + heat + the noise branch's patch outlined) and
    ``NNNNN_<stem>_faceK_heat.png`` (16-bit grey, linear in heat), NNNNN the item's index in the report.

    ``writer(index, item)`` (on each of run_scan's "item" events) returns the item with the paths set and the
    arrays dropped, and remembers it; ``fill(result)`` puts those items into the scan's result. A picture that
    cannot be written (full disk…) leaves its path null and is remembered in ``failure``; the scan goes on.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.failure: str | None = None
        self._written: dict[int, ItemResult] = {}

    def __call__(self, index: int, item: ItemResult) -> ItemResult:
        if not any(f.explanation is not None and f.explanation.pictures is not None for f in item.faces):
            return item
        stem = _file_stem(item.path)
        faces = [self._write_face(f, f"{index:05d}_{stem}_face{k}") for k, f in enumerate(item.faces)]
        self._written[index] = replace(item, faces=faces)
        return self._written[index]

    def fill(self, result: ScanResult) -> ScanResult:
        """``result`` with each item whose pictures were written replaced by the item that names them."""
        if not self._written:
            return result
        return replace(result, items=[self._written.get(i, item) for i, item in enumerate(result.items)])

    def _write_face(self, face: FaceResult, name: str) -> FaceResult:
        e = face.explanation
        if e is None or e.pictures is None:
            return face
        from mfclip_cli.explain import heat_to_uint16, render_overlay

        overlay = render_overlay(e.pictures.crop, e.pictures.heat, e.patch_box)
        paths = {}
        for key, suffix, picture in (("overlay_png", "overlay", overlay[:, :, ::-1]),
                                     ("heatmap_png", "heat", heat_to_uint16(e.pictures.heat))):
            path = self.folder / f"{name}_{suffix}.png"
            try:
                atomic_write_bytes(path, _png_bytes(picture))
                paths[key] = str(path)
            except OSError as exc:
                self.failure = self.failure or f"{safe_text(str(path))}: {os_reason(exc)}"
                paths[key] = None
        return replace(face, explanation=replace(e, pictures=None, **paths))


def _png_bytes(picture: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", picture)
    if not ok:
        raise OSError(f"PNG encoding failed for a {picture.dtype} {picture.shape} picture")
    return buf.tobytes()


def _file_stem(path: str) -> str:
    """A short, portable file-name stem from an input path (its stem, odd characters as "_")."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(safe_text(path)).stem).strip("._")
    return stem[:48] or "item"
