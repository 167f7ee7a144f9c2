"""A per-job delivery report over PowerMTA accounting files, reading columns by their header
names as log shippers and ETL tools do (each file's first line names its columns; a file may
hold several record types, their columns united).

    acct_report.py FILE...   → JSON: {job: {delivered, bounced, expired, deferred}}

`delivered` counts `d` rows; `bounced` counts `b` rows whose category is not
`message-expired`; `expired` the others; `deferred` the recipients with a `t` row. A bounce
must carry a permanent (5.x.x) status to count: a script that sees 4.x.x would take it for a
deferral.
"""
import csv
import json
import sys


def main():
    report = {}
    deferred = {}
    for path in sys.argv[1:]:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                job = row.get("jobId", "")
                counts = report.setdefault(job, {"delivered": 0, "bounced": 0, "expired": 0, "deferred": 0})
                kind = row["type"]
                if kind == "d":
                    counts["delivered"] += 1
                elif kind == "b" and row["dsnStatus"].startswith("5."):
                    key = "expired" if row["bounceCat"] == "message-expired" else "bounced"
                    counts[key] += 1
                elif kind == "t":
                    deferred.setdefault(job, set()).add(row["rcpt"])
    for job, rcpts in deferred.items():
        report.setdefault(job, {"delivered": 0, "bounced": 0, "expired": 0, "deferred": 0})["deferred"] = len(rcpts)
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
