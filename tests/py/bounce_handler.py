"""A bounce handler that reads PowerMTA accounting records by position, as the public
port25-bouncehandler does (its README configures
`record-fields b timeQueued,bounceCat,vmta,orig,rcpt,srcMta,dlvSourceIp,jobId,dsnStatus,dsnMta,dsnDiag`
and its PHP reads `$bounceRecord[2]` for the category, `[5]` for the recipient...).

Reads CSV from a file, or from standard input when run as an `<acct-file |...>` pipe, and
appends one JSON line per bounce to OUT: the recipient, whether it is a hard bounce (the
handler's default categories), the job and the status.

    bounce_handler.py OUT [FILE]
"""
import csv
import json
import sys

OFFSET_BOUNCE_CAT = 2
OFFSET_VMTA = 3
OFFSET_ORIG = 4
OFFSET_RCPT = 5
OFFSET_JOBID = 8
OFFSET_DSN_STATUS = 9
HARD = ["bad-mailbox", "bad-domain", "routing-errors", "inactive-mailbox"]


def main():
    out = open(sys.argv[1], "a", buffering=1)
    source = open(sys.argv[2], newline="") if len(sys.argv) > 2 else sys.stdin
    for row in csv.reader(source):
        if not row or row[0] == "type":
            continue
        if row[0] != "b":
            continue
        out.write(json.dumps({
            "rcpt": row[OFFSET_RCPT],
            "orig": row[OFFSET_ORIG],
            "vmta": row[OFFSET_VMTA],
            "hard": row[OFFSET_BOUNCE_CAT] in HARD,
            "category": row[OFFSET_BOUNCE_CAT],
            "job": row[OFFSET_JOBID],
            "status": row[OFFSET_DSN_STATUS],
        }) + "\n")


if __name__ == "__main__":
    main()
