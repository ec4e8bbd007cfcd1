"""Dataset manifests: one labelled record per media file, and their CSV form.

Every dataset layout (see ``layouts.py``) becomes a list of :class:`Record`. The CSV form has the columns
``path,label,kind,family,generator,source,group,split`` and is what a run directory keeps of its splits.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from ..fsutil import atomic_write_text
from .taxonomy import FAMILIES, KINDS, KNOWN_GENERATORS, Label, lookup_generator, normalise_generator

COLUMNS: tuple[str, ...] = ("path", "label", "kind", "family", "generator", "source", "group", "split")
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "label")
SPLITS: tuple[str, ...] = ("train", "val", "test")
LABELS: tuple[str, ...] = ("real", "fake")
REAL = "real"  # the kind / family / generator value a real record reports in breakdowns

# Display name (normalised) -> table key, so a manifest may name a generator either way.
_DISPLAY_TO_KEY: dict[str, str] = {normalise_generator(v[2]): k for k, v in KNOWN_GENERATORS.items()}


@dataclass(frozen=True)
class Record:
    """One media file with its label and the keys that splits and breakdowns use.

    ``source`` is the real source (dataset folder) or, for fakes, the generator folder.
    ``group`` is the split key (video id, identity or file): records sharing it always share a split.
    """

    path: str
    label: Label
    source: str
    group: str
    split: str | None = None

    def __post_init__(self) -> None:
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; valid: {', '.join(SPLITS)} or None")

    @property
    def y(self) -> int:
        """Binary class index: 0 real, 1 fake."""
        return self.label.y

    @property
    def kind(self) -> str:
        """Forgery kind, or 'real'."""
        return self.label.kind if self.label.is_fake and self.label.kind else REAL

    @property
    def family(self) -> str:
        """Generator family, or 'real'."""
        return self.label.family if self.label.is_fake and self.label.family else REAL

    @property
    def generator(self) -> str:
        """Generator display name, or 'real'."""
        return self.label.generator if self.label.is_fake and self.label.generator else REAL


Manifest = list[Record]


def record_row(record: Record) -> dict[str, str]:
    """The CSV row of a record (all columns, strings; an unset split is empty)."""
    return {
        "path": record.path,
        "label": "fake" if record.label.is_fake else "real",
        "kind": record.kind,
        "family": record.family,
        "generator": record.generator,
        "source": record.source,
        "group": record.group,
        "split": record.split or "",
    }


def manifest_to_csv_text(records: list[Record]) -> str:
    """The manifest as CSV text, rows in the given order."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow(record_row(r))
    return buf.getvalue()


def write_manifest_csv(records: list[Record], path: str | os.PathLike) -> None:
    """Atomically write ``records`` as a manifest CSV (absolute paths, all columns)."""
    atomic_write_text(path, manifest_to_csv_text(records))


def manifest_sha256(records: list[Record]) -> str:
    """Stable hex SHA-256 of a manifest, for checkpoints.

    Rows are sorted, and paths are taken relative to the records' common folder, so the same dataset
    hashes the same wherever it is mounted (and in whatever order it was listed).
    """
    if not records:
        return hashlib.sha256(b"").hexdigest()
    try:
        base = os.path.commonpath([os.path.dirname(r.path) for r in records])
    except ValueError:  # no common folder (e.g. two Windows drives): hash the paths as they are
        base = ""
    rows = []
    for r in records:
        row = record_row(r)
        row["path"] = Path(os.path.relpath(r.path, base) if base else r.path).as_posix()
        rows.append("\x1f".join(row[c] for c in COLUMNS))
    h = hashlib.sha256()
    for line in sorted(rows):
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _fake_label(row: dict[str, str], where: str) -> Label:
    generator = row.get("generator", "").strip()
    if not generator or generator == REAL:
        raise DatasetError(f"{where}: a fake row needs a generator name (use 'unknown' if it is not known)")
    key = normalise_generator(generator)
    key = key if key in KNOWN_GENERATORS else _DISPLAY_TO_KEY.get(key, key)
    table = lookup_generator(key)
    kind = row.get("kind", "").strip() or (table[0] if table else "")
    family = row.get("family", "").strip() or (table[1] if table else "unknown")
    if kind not in KINDS:
        hint = "" if kind else f" (generator {generator!r} is not in the known table, so the kind must be given)"
        raise DatasetError(f"{where}: unknown forgery kind {kind!r}{hint}; valid kinds: {', '.join(KINDS)}")
    if family not in FAMILIES:
        raise DatasetError(f"{where}: unknown generator family {family!r}; valid families: {', '.join(FAMILIES)}")
    return Label.fake(kind, family, generator)


def _row_label(row: dict[str, str], where: str) -> Label:
    label = row.get("label", "").strip().lower()
    if label not in LABELS:
        raise DatasetError(f"{where}: unknown label {row.get('label', '')!r}; valid labels: {', '.join(LABELS)}")
    if label == "fake":
        return _fake_label(row, where)
    for col in ("kind", "family", "generator"):
        value = row.get(col, "").strip()
        if value not in ("", REAL):
            raise DatasetError(f"{where}: a real row must leave {col!r} empty (or 'real'), got {value!r}")
    return Label.real()


def read_manifest_csv(
    path: str | os.PathLike, root: str | os.PathLike | None = None, check_files: bool = True
) -> list[Record]:
    """Records of a manifest CSV, in file order.

    Columns ``path`` and ``label`` are required; ``kind``/``family`` of a fake row default to the known
    generator table (family 'unknown' for a generator not in it), ``source`` to the generator (fakes) or
    the file's parent folder name (reals), ``group`` to the path as written, ``split`` to none.
    Relative paths are resolved against ``root``, or else the CSV's folder. Every problem raises
    :class:`DatasetError` naming the CSV line.
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"manifest {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"manifest {path} cannot be read as UTF-8 text: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unknown = [c for c in header if c not in COLUMNS]
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown column(s) {', '.join(unknown)}")
        raise DatasetError(
            f"manifest {path}: {'; '.join(problems)}. Columns are {', '.join(COLUMNS)} "
            f"(only {', '.join(REQUIRED_COLUMNS)} are required)"
        )
    reader.fieldnames = header
    records: list[Record] = []
    first_line: dict[str, int] = {}
    missing_files: list[str] = []
    for line_no, raw in enumerate(reader, start=2):
        where = f"manifest {path}, line {line_no}"
        if None in raw:
            raise DatasetError(f"{where}: more fields than the {len(header)} columns of the header")
        row = {k: (v or "").strip() for k, v in raw.items()}
        if not row["path"]:
            raise DatasetError(f"{where}: empty path")
        label = _row_label(row, where)
        file_path = os.path.abspath(os.path.join(base, row["path"]))
        if file_path in first_line:
            raise DatasetError(f"{where}: path {row['path']!r} already listed on line {first_line[file_path]}")
        first_line[file_path] = line_no
        split = row.get("split", "") or None
        if split is not None and split not in SPLITS:
            raise DatasetError(f"{where}: unknown split {split!r}; valid: {', '.join(SPLITS)} or empty")
        source = row.get("source", "") or (label.generator if label.is_fake else Path(file_path).parent.name)
        group = row.get("group", "") or row["path"]
        if check_files and not os.path.isfile(file_path):
            missing_files.append(file_path)
        records.append(Record(file_path, label, str(source), group, split))
    if missing_files:
        shown = "\n  ".join(missing_files[:5])
        more = f"\n  ... and {len(missing_files) - 5} more" if len(missing_files) > 5 else ""
        raise DatasetError(
            f"manifest {path}: {len(missing_files)} listed file(s) do not exist:\n  {shown}{more}\n"
            f"Relative paths are resolved against {base}; pass the dataset root if they are relative to it."
        )
    return records
