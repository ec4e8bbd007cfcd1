"""`mfclip eval`: score a dataset with a checkpoint and compute the paper's metrics (SPEC §6).

Rooms: ``scoring`` (the pure core: :func:`score_entries`, :func:`report_for_set`), ``selection`` (which records
are test data), ``overlap`` (the guard against evaluating training files), ``calibration`` (``--calibrate``),
``plots``, ``options`` (:class:`EvalOptions` / :class:`EvalResult`), ``run`` (the driver :func:`run_eval`, which
picks the test sets, crops them with the checkpoint's own crop policy, guards, optionally recalibrates and
scores) and ``suite`` (``--suite``). Progress goes to ``on_event(event, payload)``; nothing here writes the JSON or
the plots: ``report.eval`` (writers and Rich tables) reads one result, which carries the scores the plots need.

Decisions worth knowing:
- Without ``--split`` / ``--protocol`` every record is test data (one set, "all"). ``--split S`` keeps the
  records whose split is S: preset splits (GenFace, CSV) are honoured, other groups are assigned with the
  same hash rule and fractions (val 0.1, test ``--test-frac``, default 0.2) as ``mfclip train``, so
  ``--split test --seed K [--test-frac F]`` reproduces a run's in-domain test split.
- ``--protocol`` evaluates the protocol's test sets. leave-source-out has one run per held-out pair; the
  run the checkpoint was trained on (its ``training.split`` name) is evaluated, else run 1 — other runs'
  test sets contain this checkpoint's training files. cross-generator without ``--test-generators`` holds
  out every generator the checkpoint was not trained on (its ``taxonomy.generators``).
- Robustness perturbations and ``--standardize`` act on the face crop (after cropping, before the model),
  not on the full image, and on reals and fakes alike. With both, a crop is perturbed, then standardized.
- ``--calibrate ROOT`` reads ROOT with layout auto (``--layout`` describes ``--data`` only).

``--suite DIR`` (:class:`SuiteOptions` in, :func:`run_suite`, or :func:`run_suite_model` for a model already in
memory, :class:`SuiteResult` out): every visible
sub-folder of DIR is one dataset root, read with layout auto (a generic tree with only ``real/`` or only
``fake/`` is read too, so it can be reported as one-class). Each set is cropped with the checkpoint's crop policy
and scored at the checkpoint's threshold; ``--bootstrap``, ``--robustness`` and ``--plots DIR`` (into
``DIR/<set>/``) apply per set. A set that is empty, unreadable as a dataset, or one-class after skipping broken
files is not scored: its ``error`` says why, and the summary covers the other sets. JSON (schema
``mfclip.eval-suite/1``)::

    {"schema", "tool", "checkpoint": {"path", "sha256"}, "suite": {"path"}, "threshold": float,
     "sets": [{"name", "path", "status": "scored|not_scored", "error": str|null, "n_real", "n_fake",
               "rows": [<as in mfclip.eval/1: all, then per generator / kind / family>], "video",
               "real_sources": [{"source", "n", "real_acc"}], "robustness": [...], "skipped", "skipped_files",
               "overlap": int|null}],
     "summary": {"n_sets", "n_sets_scored", "n_sets_unscored", "unscored_sets": [name],
                 "mean_auc", "min_auc", "min_auc_set",        # over the scored sets' 'all' rows
                 "worst_real_acc", "worst_real_set", "worst_real_source"},  # min over every real source folder
     "notes", "settings", "plots": [path]}

``worst_real_acc`` is the lowest share of one real source's images called real (1 - that source's false-positive
rate): the false-alarm rate a user whose photos look like that source meets. Undefined values are null.
"""

from .options import SCHEMA_ID, EvalOptions, EvalResult
from .plots import write_eval_plots, write_set_plots, write_suite_plots
from .run import run_eval
from .scoring import RobustnessRow, SetReport, crop_pipeline, labels_of, report_for_set, score_entries
from .selection import select_sets
from .suite import SUITE_SCHEMA_ID, SuiteOptions, SuiteResult, run_suite, run_suite_model

__all__ = [
    "SCHEMA_ID", "SUITE_SCHEMA_ID", "EvalOptions", "EvalResult", "RobustnessRow", "SetReport", "SuiteOptions",
    "SuiteResult", "crop_pipeline", "labels_of", "report_for_set", "run_eval", "run_suite", "run_suite_model",
    "score_entries", "select_sets", "write_eval_plots", "write_set_plots", "write_suite_plots",
]
