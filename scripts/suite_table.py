"""Print the Markdown suite table of an `mfclip eval --suite ... --json FILE` report (for the model card).

    uv run python scripts/suite_table.py benchmarks/results/default_model_suite.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def table(report: dict) -> str:
    lines = ["| set / row | n real | n fake | AUC [95 % CI] | AP | EER | ACC | real-ACC | fake-ACC |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in report["sets"]:
        rows = {r["group_by"]: r for r in s.get("rows", [])}
        if "all" not in rows:
            lines.append(f"| `{s['name']}` | | | not scored: {s.get('message') or s.get('status')} | | | | | |")
            continue
        for r in s["rows"]:
            if r["group_by"] not in ("all", "generator"):
                continue
            name = f"**`{s['name']}`**" if r["group_by"] == "all" else f"&nbsp;&nbsp;fake: {r['name']}"
            ci = r.get("auc_ci")
            auc = fmt(r["auc"]) + (f" [{ci[0]:.2f}–{ci[1]:.2f}]" if ci else "")
            lines.append(f"| {name} | {r['n_real']} | {r['n_fake']} | {auc} | {fmt(r['ap'])} | {fmt(r['eer'])} | "
                         f"{fmt(r['acc'])} | {fmt(r['real_acc'])} | {fmt(r['fake_acc'])} |")
        for src in s.get("real_sources", []):
            lines.append(f"| &nbsp;&nbsp;real: {src['source']} | {src['n']} | | | | | | {fmt(src['real_acc'])} | |")
    m = report["summary"]
    lines.append(f"| **summary** ({m['n_sets_scored']} of {m['n_sets']} sets) | | | mean **{fmt(m['mean_auc'])}**, "
                 f"min **{fmt(m['min_auc'])}** | | | | worst **{fmt(m['worst_real_acc'])}** "
                 f"({m['worst_real_source']}) | |")
    return "\n".join(lines)


if __name__ == "__main__":
    report = json.loads(Path(sys.argv[1]).read_text())
    print(table(report))
    print(f"\nthreshold {report['threshold']}")
