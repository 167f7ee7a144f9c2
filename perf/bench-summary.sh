#!/usr/bin/env bash
# Runs the criterion benches (unless NO_RUN=1) and prints a Markdown table of their mean
# times, and throughput where a bench declares one, read from criterion's estimate files.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NO_RUN:-}" ]; then
    cargo bench --locked --bench protocol --bench spool_codec --bench limiter --bench dkim --bench suppress -- --warm-up-time 1 --measurement-time 3 >/dev/null 2>&1
fi
python3 - <<'PY'
import json, pathlib
print("| benchmark | mean | throughput |")
print("|---|---|---|")
for est in sorted(pathlib.Path("target/criterion").glob("**/new/estimates.json")):
    d = est.parent
    mean = json.loads(est.read_text())["mean"]["point_estimate"]
    bench = json.loads((d / "benchmark.json").read_text())
    t = f"{mean:.1f} ns" if mean < 1e3 else f"{mean/1e3:.2f} µs" if mean < 1e6 else f"{mean/1e6:.2f} ms"
    tp = bench.get("throughput") or {}
    rate = ""
    if "Bytes" in tp:
        rate = f"{tp['Bytes'] / mean:.2f} GB/s"
    elif "Elements" in tp:
        rate = f"{tp['Elements'] / mean * 1e3:.2f} M elements/s"
    print(f"| {bench['full_id']} | {t} | {rate} |")
PY
