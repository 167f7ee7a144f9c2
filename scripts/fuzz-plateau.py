#!/usr/bin/env python3
"""Fuzzes each target until its coverage reaches a plateau, and records how long it took.

A target runs (one libFuzzer process, one core) until its coverage count (libFuzzer's `cov:`)
has not risen for STALL seconds, or MAX seconds have passed. New inputs go into the target's
corpus (fuzz/corpus/TARGET/); a crash stops the run and leaves its input in
fuzz/artifacts/TARGET/ (fix it, then keep it in fuzz/regressions/TARGET/). One row per target
is appended to fuzz/PLATEAU.md: the date, seconds run, executions, final coverage and
features, when coverage last rose, whether it plateaued, crashes.

    scripts/fuzz-plateau.py [--stall 300] [--max 1800] [TARGET ...]   (default: every target)

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


def run(target, stall_s, max_s):
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
    for line in proc.stdout:
        m = LINE.match(line)
        if m:
            n, c, f, k = (int(x) for x in m.groups())
            execs, corp = n, k
            if c > cov:
                cov, last_rise = c, time.monotonic()
            ft = f
        elif line.startswith("stat::number_of_executed_units:"):
            execs = int(line.split(":")[-1])
        elif "panicked" in line or "deadly signal" in line or "ERROR: libFuzzer" in line:
            crashed = True
            sys.stdout.write(line)
        if time.monotonic() - last_rise >= stall_s and not plateau:
            plateau = True
            proc.terminate()
    proc.wait()
    ran = time.monotonic() - start
    return {
        "target": target, "seconds": round(ran), "execs": execs, "cov": cov, "ft": ft, "corpus": corp,
        "last_rise_s": round(last_rise - start), "plateau": plateau, "crashed": crashed,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stall", type=int, default=300, help="seconds without new coverage that count as a plateau")
    p.add_argument("--max", type=int, default=1800, help="seconds at most per target")
    p.add_argument("targets", nargs="*")
    a = p.parse_args()
    subprocess.run(["cargo", "+nightly", "fuzz", "build"], cwd=FUZZ, check=True)
    table = os.path.join(FUZZ, "PLATEAU.md")
    if not os.path.exists(table):
        with open(table, "w") as f:
            f.write("# Fuzzing to a plateau\n\nWritten by `scripts/fuzz-plateau.py`: one row per run of a target, "
                    "on one core. *Plateau* means coverage (libFuzzer's `cov`) did not rise for the stall time "
                    "given; *last rise* is when it last did.\n\n"
                    "| date (UTC) | target | seconds | executions | cov | ft | corpus | last rise (s) | stall (s) "
                    "| plateau | crash |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    crashed = False
    for t in a.targets or targets():
        r = run(t, a.stall, a.max)
        crashed |= r["crashed"]
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
        row = (f"| {date} | `{t}` | {r['seconds']} | {r['execs']:,} | {r['cov']} | {r['ft']} | {r['corpus']} "
               f"| {r['last_rise_s']} | {a.stall} | {'yes' if r['plateau'] else 'no'} "
               f"| {'**yes**' if r['crashed'] else 'no'} |\n")
        with open(table, "a") as f:
            f.write(row)
        print(row, end="", flush=True)
    sys.exit(1 if crashed else 0)


if __name__ == "__main__":
    main()
