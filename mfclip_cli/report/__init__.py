"""The reports of `mfclip scan` and `mfclip eval`: result objects, the scan schema, exit codes, writers, tables.

The single source of truth for the scan report format is here: ``SCHEMA_ID``, the dataclasses whose
``to_json`` produce it (``report.scan``), ``schemas/scan_report.schema.json`` that describes it, and ``ExitCode``
(``report.codes``). Rooms: ``text`` (paths, times, rounding), ``writers`` (JSON/CSV/JSONL, explanation
pictures), ``targets`` (where reports go, checked before a scan), ``tables`` (Rich), ``html`` (one HTML page),
``eval`` (Rich tables of eval results).
"""

from .codes import ExitCode, exit_code_for, interrupted_exit_code
from .scan import (
    CSV_COLUMNS,
    DISAGREE_MARK,
    KINDS,
    PROVENANCE_COUNTS,
    SCHEMA_ID,
    SCORE_DECIMALS,
    STATUSES,
    TOOL_NAME,
    VERDICTS,
    ExplanationPictures,
    FaceExplanation,
    FaceResult,
    ItemResult,
    ModelInfo,
    ScanResult,
    ToolInfo,
    load_scan_schema,
    provenance_counts,
)
from .tables import render_summary, render_table, summary_line
from .targets import (
    STDOUT,
    ReportTarget,
    WriteFailure,
    check_targets_against_inputs,
    plan_report_targets,
    write_reports,
)
from .text import format_utc, path_b64, path_bytes, safe_text, utc_now
from .writers import ExplanationWriter, JsonlWriter, write_csv, write_json

__all__ = [
    "CSV_COLUMNS", "DISAGREE_MARK", "KINDS", "PROVENANCE_COUNTS", "SCHEMA_ID", "SCORE_DECIMALS", "STATUSES", "STDOUT",
    "TOOL_NAME", "VERDICTS", "ExitCode", "ExplanationPictures", "ExplanationWriter", "FaceExplanation", "FaceResult",
    "ItemResult", "JsonlWriter", "ModelInfo", "ReportTarget", "ScanResult", "ToolInfo", "WriteFailure",
    "check_targets_against_inputs", "exit_code_for", "format_utc", "interrupted_exit_code", "load_scan_schema",
    "path_b64", "path_bytes", "plan_report_targets", "provenance_counts", "render_summary", "render_table",
    "safe_text", "summary_line", "utc_now", "write_csv", "write_json", "write_reports",
]
