#!/usr/bin/env bash
# Makes docs/scan_report.png, the README's picture of `mfclip scan --html`: the shipped model on examples/
# plus one corrupt file, rendered by headless Chromium with the command tests/test_html.py uses.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
printf 'not an image' > "$work/broken.jpg"
uv run mfclip scan examples/ "$work/broken.jpg" --html "$work/report.html" --explain --explain-dir "$work/explain" \
  --json "$work/report.json" -q || [ $? -le 3 ]  # exit 1/3: something flagged / a file unreadable
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --screenshot="$work/page.png" \
  --window-size=1280,1600 "file://$work/report.html" 2>/dev/null
mv "$work/page.png" docs/scan_report.png
echo "wrote docs/scan_report.png"
