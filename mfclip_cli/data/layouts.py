"""Dataset layouts: read a dataset folder (or manifest CSV) into a sorted list of :class:`Record`.

Supported trees (folder names matched case-insensitively; hidden files and non-media files such as
README.md / manifest.csv are skipped):

- generic: ``ROOT/real/<source>/**`` and ``ROOT/fake/<kind>/<generator>/**``
- GenFace: ``ROOT/{train,val,test}/real/<source>/**`` and
  ``ROOT/{train,val,test}/fake/{EFS,FS,AM}/{Diffusion,GAN}/[<generator>/]**``
- DiFF: ``ROOT/{real|original}/**`` and ``ROOT/{T2I,I2I,FS,FE}/<method>/**``
  (optionally one level down in ``ROOT/{train,val,test}/``)
- CSV manifest (see ``manifest.py``)

Files directly inside a real folder get the source name of that folder ('real', 'original').
Group key: a frame file (``frame_0001.png``, ``0001.png``) inside a sub-folder of its source/generator
folder belongs to that sub-folder (one video); any other file is its own group. Group keys are paths
relative to ROOT.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from ..errors import DatasetError
from ..media import is_media_file
from .manifest import Record, read_manifest_csv
from .taxonomy import KINDS, Label, label_for_generator, lookup_generator

SPLIT_DIRS: tuple[str, ...] = ("train", "val", "test")

GENFACE_KINDS: dict[str, str] = {"efs": "entire_synthesis", "fs": "face_swap", "am": "face_edit"}
GENFACE_FAMILIES: dict[str, str] = {"diffusion": "diffusion", "gan": "gan"}
DIFF_KINDS: dict[str, str] = {
    "t2i": "entire_synthesis",
    "i2i": "image_to_image",
    "fs": "face_swap",
    "fe": "face_edit",
}
DIFF_REAL_DIRS: tuple[str, ...] = ("real", "original")

_FRAME_STEM = re.compile(r"^(frame|img|image)?[_-]?\d+$", re.IGNORECASE)

LAYOUT_HELP = """Expected one of these dataset layouts:
  generic:  ROOT/real/<source>/**  and  ROOT/fake/<kind>/<generator>/**
            (kind: entire_synthesis | face_swap | face_edit | image_to_image)
  GenFace:  ROOT/{train,val,test}/real/<source>/**  and
            ROOT/{train,val,test}/fake/{EFS,FS,AM}/{Diffusion,GAN}/[<generator>/]**
  DiFF:     ROOT/real/** (or Real/, original/)  and  ROOT/{T2I,I2I,FS,FE}/<method>/**
  csv:      a manifest CSV with columns path,label[,kind,family,generator,source,group,split]"""


def _subdirs(folder: Path) -> dict[str, Path]:
    """Visible sub-folders by lower-case name; two that differ only in case are an error."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        key = entry.name.lower()
        if key in out:
            raise DatasetError(f"{folder}: folders {out[key].name!r} and {entry.name!r} differ only in case")
        out[key] = entry
    return out


def _direct_media(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_media_file(p))


def _walk_media(folder: Path) -> list[Path]:
    """Media files under ``folder`` (recursive, hidden files and folders skipped), sorted."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and is_media_file(name):
                found.append(Path(dirpath) / name)
    return sorted(found)


def group_key(file: Path, base: Path, root: Path) -> str:
    """Split key of ``file`` found under the source/generator folder ``base`` (a path relative to ``root``).

    Frames of one video (``<video_id>/frame_0001.png`` below ``base``) share their folder's key.
    """
    rel_to_base = file.relative_to(base)
    target = file.parent if len(rel_to_base.parts) >= 2 and _FRAME_STEM.match(file.stem) else file
    return target.relative_to(root).as_posix()


def _records_under(
    folder: Path, root: Path, label: Label, source: str, split: str | None = None, recursive: bool = True
) -> list[Record]:
    files = _walk_media(folder) if recursive else _direct_media(folder)
    return [Record(os.path.abspath(f), label, source, group_key(f, folder, root), split) for f in files]


def _reject_loose_files(folder: Path, expected: str) -> None:
    loose = _direct_media(folder)
    if loose:
        raise DatasetError(
            f"{len(loose)} media file(s) directly in {folder} (e.g. {loose[0].name}); "
            f"they belong in {expected} so that their label is known"
        )


def _read_real_folder(folder: Path, root: Path, split: str | None) -> list[Record]:
    """Records of a real folder: ``<folder>/<source>/**``; files directly inside get the folder's name."""
    records = _records_under(folder, root, Label.real(), folder.name, split, recursive=False)
    for sub in _subdirs(folder).values():
        records += _records_under(sub, root, Label.real(), sub.name, split)
    return records


def _require_dir(root: str | os.PathLike) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"dataset root {path} is not a folder")
    return path


def _nonempty(records: list[Record], root: Path, layout: str) -> list[Record]:
    if not records:
        raise DatasetError(f"no image or video files found in {root} (read as the {layout} layout)")
    return sorted(records, key=lambda r: r.path)


def read_generic(root: str | os.PathLike) -> list[Record]:
    """Records of a generic tree: ``ROOT/real/<source>/**`` and ``ROOT/fake/<kind>/<generator>/**``."""
    rootp = _require_dir(root)
    top = _subdirs(rootp)
    if "real" not in top and "fake" not in top:
        raise DatasetError(f"{rootp} has neither real/ nor fake/ folder.\n{LAYOUT_HELP}")
    records: list[Record] = []
    if "real" in top:
        records += _read_real_folder(top["real"], rootp, None)
    if "fake" in top:
        fake = top["fake"]
        _reject_loose_files(fake, "fake/<kind>/<generator>/")
        for kind_name, kind_dir in _subdirs(fake).items():
            if kind_name not in KINDS:
                raise DatasetError(
                    f"{kind_dir}: unknown forgery kind folder {kind_dir.name!r}; "
                    f"fake/ must contain only {', '.join(KINDS)}"
                )
            _reject_loose_files(kind_dir, f"fake/{kind_name}/<generator>/")
            for gen_dir in _subdirs(kind_dir).values():
                label = label_for_generator(gen_dir.name, kind_name)
                records += _records_under(gen_dir, rootp, label, gen_dir.name)
    return _nonempty(records, rootp, "generic")


def _genface_fake_label(folder: str, kind: str, family: str) -> Label:
    """GenFace fake label: the tree gives kind and family; the table gives the display name if known."""
    known = lookup_generator(folder)
    display = known[2] if known else folder.replace("_", " ")
    return Label.fake(kind, family, display)


def read_genface(root: str | os.PathLike) -> list[Record]:
    """Records of a GenFace tree; the split comes from the tree (train / val / test)."""
    rootp = _require_dir(root)
    top = _subdirs(rootp)
    splits = [s for s in SPLIT_DIRS if s in top]
    if not splits:
        raise DatasetError(f"{rootp} has no train/, val/ or test/ folder.\n{LAYOUT_HELP}")
    records: list[Record] = []
    for split in splits:
        split_dir = top[split]
        parts = _subdirs(split_dir)
        if "real" in parts:
            records += _read_real_folder(parts["real"], rootp, split)
        if "fake" not in parts:
            continue
        fake = parts["fake"]
        _reject_loose_files(fake, f"{split}/fake/{{EFS,FS,AM}}/{{Diffusion,GAN}}/")
        for kind_key, kind_dir in _subdirs(fake).items():
            if kind_key not in GENFACE_KINDS:
                raise DatasetError(
                    f"{kind_dir}: unknown GenFace forgery folder {kind_dir.name!r}; valid: EFS, FS, AM"
                )
            kind = GENFACE_KINDS[kind_key]
            _reject_loose_files(kind_dir, f"{split}/fake/{kind_dir.name}/{{Diffusion,GAN}}/")
            for fam_key, fam_dir in _subdirs(kind_dir).items():
                if fam_key not in GENFACE_FAMILIES:
                    raise DatasetError(
                        f"{fam_dir}: unknown GenFace family folder {fam_dir.name!r}; valid: Diffusion, GAN"
                    )
                family = GENFACE_FAMILIES[fam_key]
                # Files directly in the family folder: the generator is not named by the tree.
                unnamed = f"{kind.replace('_', ' ')} {family}"
                records += _records_under(
                    fam_dir, rootp, Label.fake(kind, family, unnamed), f"{kind_dir.name}_{fam_dir.name}",
                    split, recursive=False,
                )
                for gen_dir in _subdirs(fam_dir).values():
                    label = _genface_fake_label(gen_dir.name, kind, family)
                    records += _records_under(gen_dir, rootp, label, gen_dir.name, split)
    return _nonempty(records, rootp, "GenFace")


def _diff_label(method: str, kind: str) -> Label:
    """DiFF fake label: kind from the category folder, family diffusion, display name from the table."""
    known = lookup_generator(method)
    display = known[2] if known else method.replace("_", " ")
    return Label.fake(kind, "diffusion", display)


def _read_diff_tree(folder: Path, root: Path, split: str | None) -> list[Record]:
    parts = _subdirs(folder)
    real_dirs = [parts[name] for name in DIFF_REAL_DIRS if name in parts]
    if len(real_dirs) > 1:
        raise DatasetError(f"{folder}: more than one real folder ({', '.join(d.name for d in real_dirs)})")
    if not real_dirs:
        raise DatasetError(f"{folder}: the DiFF layout needs a real folder (real/, Real/ or original/) beside T2I/…")
    records = _read_real_folder(real_dirs[0], root, split)
    for cat_key, cat_dir in parts.items():
        if cat_key not in DIFF_KINDS:
            continue
        kind = DIFF_KINDS[cat_key]
        _reject_loose_files(cat_dir, f"{cat_dir.name}/<method>/")
        for method_dir in _subdirs(cat_dir).values():
            records += _records_under(method_dir, root, _diff_label(method_dir.name, kind), method_dir.name, split)
    return records


def _has_diff_categories(folder: Path) -> bool:
    return any(k in DIFF_KINDS for k in _subdirs(folder))


def read_diff(root: str | os.PathLike) -> list[Record]:
    """Records of a DiFF tree (all fakes family 'diffusion'); a top-level train/val/test level sets splits."""
    rootp = _require_dir(root)
    top = _subdirs(rootp)
    if _has_diff_categories(rootp):
        records = _read_diff_tree(rootp, rootp, None)
    else:
        splits = [s for s in SPLIT_DIRS if s in top and _has_diff_categories(top[s])]
        if not splits:
            raise DatasetError(f"{rootp} has no T2I/, I2I/, FS/ or FE/ folder.\n{LAYOUT_HELP}")
        records = []
        for split in splits:
            records += _read_diff_tree(top[split], rootp, split)
    return _nonempty(records, rootp, "DiFF")


def read_csv(path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Record]:
    """Records of a manifest CSV (sorted by path)."""
    return sorted(read_manifest_csv(path, root=root), key=lambda r: r.path)


def detect_layout(root: str | os.PathLike) -> str:
    """Name of the layout of ``root`` (generic | genface | diff | csv); DatasetError if none fits."""
    path = Path(root)
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise DatasetError(f"{path} is a file but not a .csv manifest.\n{LAYOUT_HELP}")
    if not path.is_dir():
        raise DatasetError(f"dataset path {path} does not exist")
    top = _subdirs(path)
    split_dirs = [top[s] for s in SPLIT_DIRS if s in top]
    if any({"real", "fake"} <= set(_subdirs(d)) for d in split_dirs):
        return "genface"
    if _has_diff_categories(path) or any(_has_diff_categories(d) for d in split_dirs):
        return "diff"
    if "real" in top and "fake" in top:
        return "generic"
    found = ", ".join(sorted(d.name for d in top.values())) or "no folders"
    raise DatasetError(f"cannot tell the layout of {path} (found: {found}).\n{LAYOUT_HELP}")


_READERS: dict[str, Callable[[str | os.PathLike], list[Record]]] = {
    "generic": read_generic,
    "genface": read_genface,
    "diff": read_diff,
    "csv": read_csv,
}
LAYOUTS: tuple[str, ...] = ("auto", *_READERS)  # "auto" detects one of the readers' layouts


def read_dataset(root: str | os.PathLike, layout: str = "auto") -> list[Record]:
    """Records of a dataset folder or manifest CSV, sorted by path; ``layout='auto'`` detects it."""
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    name = detect_layout(root) if layout == "auto" else layout
    return _READERS[name](root)
