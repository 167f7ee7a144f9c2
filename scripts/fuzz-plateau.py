#!/usr/bin/env python3
"""Fuzzes each target until its coverage reaches a plateau, and records how long it took.

A target runs (one libFuzzer process, one core) until its coverage count (libFuzzer's `cov:`)
has not risen for STALL seconds, or has risen by less than SLOPE per cent over the last
WINDOW seconds (a plateau that still creeps: a new edge every minute or two, each from
the corpus's far corners), or MAX seconds have passed. New inputs go into the target's
corpus (fuzz/corpus/TARGET/); a crash stops the run and leaves its input in
fuzz/artifacts/TARGET/ (fix it, then keep it in fuzz/regressions/TARGET/). One row per target
is appended to fuzz/PLATEAU.md: the date, seconds run, executions, final coverage and
features, when coverage last rose, whether it plateaued, crashes.

    scripts/fuzz-plateau.py [--stall 300] [--window 600] [--slope 1.0] [--max 1800] [TARGET ...]
    (default: every target)

Needs cargo-fuzz and a nightly toolchain (scripts/fuzz.sh installs cargo-fuzz). By hand or on
a spare machine, never in CI (CI replays the corpora instead: tests/fuzz_regressions.rs).
"""
import argparse
import datetime
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "fuzz")
LINE = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")


def targets():
    out = subprocess.run(["cargo", "+nightly", "fuzz", "list"], cwd=FUZZ, capture_output=True, text=True, check=True)
    return out.stdout.split()


def run(target, stall_s, max_s, window_s, slope_pct):
    # The binary `cargo fuzz build` made, run directly: sources edited meanwhile are not rebuilt
    # half-way through a series of targets.
    binary = os.path.join(FUZZ, "target", "x86_64-unknown-linux-gnu", "release", target)
    os.makedirs(os.path.join(FUZZ, "artifacts", target), exist_ok=True)
    cmd = [binary, os.path.join("corpus", target), f"-artifact_prefix=artifacts/{target}/",
           f"-max_total_time={max_s}", "-rss_limit_mb=2048", "-print_final_stats=1"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=FUZZ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    cov = ft = corp = execs = 0
    last_rise = start
    crashed = False
    plateau = False
    # (seconds since start, coverage) at each rise: how much the last window added.
    history = [(0.0, 0)]
    for line in proc.stdout:
        m = LINE.match(line)
        if m:
            n, c, f, k = (int(x) for x in m.groups())
            execs, corp = n, k
            if c > cov:
                cov, last_rise = c, time.monotonic()
                history.append((last_rise - start, cov))
            ft = f
        elif line.startswith("stat::number_of_executed_units:"):
            execs = int(line.split(":")[-1])
        elif "panicked" in line or "deadly signal" in line or "ERROR: libFuzzer" in line:
            crashed = True
            sys.stdout.write(line)
        now = time.monotonic() - start
        if not plateau and (now - (last_rise - start) >= stall_s or
                            (now >= window_s and rise_pct(history, now, window_s) < slope_pct)):
            plateau = True
            proc.terminate()
    proc.wait()
    ran = time.monotonic() - start
    return {
        "window_rise_pct": rise_pct(history, ran, window_s),
        "target": target, "seconds": round(ran), "execs": execs, "cov": cov, "ft": ft, "corpus": corp,
        "last_rise_s": round(last_rise - start), "plateau": plateau, "crashed": crashed,
    }


def rise_pct(history, now, window_s):
    """How much coverage rose (per cent of the final count) in the last `window_s` seconds."""
    final = history[-1][1]
    before = max((c for t, c in history if t <= now - window_s), default=0)
    return 100.0 * (final - before) / max(final, 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stall", type=int, default=300, help="seconds without new coverage that count as a plateau")
    p.add_argument("--max", type=int, default=1800, help="seconds at most per target")
    p.add_argument("--window", type=int, default=600, help="seconds over which the rise is measured")
    p.add_argument("--slope", type=float, default=1.0, help="per cent rise over the window that counts as a plateau")
    p.add_argument("targets", nargs="*")
    a = p.parse_args()
    subprocess.run(["cargo", "+nightly", "fuzz", "build"], cwd=FUZZ, check=True)
    table = os.path.join(FUZZ, "PLATEAU.md")
    if not os.path.exists(table):
        with open(table, "w") as f:
            f.write("# Fuzzing to a plateau\n\nWritten by `scripts/fuzz-plateau.py`: one row per run of a target, "
                    "on one core. *Plateau* means coverage (libFuzzer's `cov`) did not rise for the stall time "
                    "given; *last rise* is when it last did.\n\n"
                    "| date (UTC) | target | seconds | executions | cov | ft | corpus | last rise (s) "
                    "| rise in the last window | plateau | crash |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    crashed = False
    for t in a.targets or targets():
        r = run(t, a.stall, a.max, a.window, a.slope)
        crashed |= r["crashed"]
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
        # A run shorter than the window has no window to measure (it stalled first).
        rise = f"{r['window_rise_pct']:.2f} %" if r["seconds"] >= a.window else "(stalled first)"
        row = (f"| {date} | `{t}` | {r['seconds']} | {r['execs']:,} | {r['cov']} | {r['ft']} | {r['corpus']} "
               f"| {r['last_rise_s']} | {rise} | {'yes' if r['plateau'] else 'no'} "
               f"| {'**yes**' if r['crashed'] else 'no'} |\n")
        with open(table, "a") as f:
            f.write(row)
        print(row, end="", flush=True)
    sys.exit(1 if crashed else 0)


if __name__ == "__main__":
    main()
