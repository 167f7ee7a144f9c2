"""How the public Postmastery "pmtabounce" addon for Interspire Email Marketer reads PowerMTA
accounting files (its `cron.php`, `ParseFile`), in Python: the columns are found by their
names in the header line (`timeLogged`, `rcpt`, `dsnDiag`, `bounceCat`, then
`header_X-Mailer-LID` or else `header_X-List-ID`, `header_X-Mailer-SID` or else
`header_X-Mailing-ID`); every `b` and `rb` row becomes a bounce of subscriber `rcpt` on the
lists in X-Mailer-LID (comma-separated) for the mailing X-Mailer-SID, hard for bad-mailbox,
inactive-mailbox and bad-domain, soft for quota-issues, no-answer-from-host,
relaying-issues and routing-errors. A file without those columns is skipped, as the addon
skips it. Prints one JSON object per bounce found.

    pmtabounce_reader.py FILE...
"""
import csv
import json
import re
import sys


def column(fields, *names):
    for n in names:
        if n in fields:
            return fields.index(n)
    return None


def parse(path):
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        fields = next(rows, None)
        if not fields or fields[0] != "type":
            return
        time_logged, rcpt = column(fields, "timeLogged"), column(fields, "rcpt")
        dsn_diag, bounce_cat = column(fields, "dsnDiag"), column(fields, "bounceCat")
        lid = column(fields, "header_X-Mailer-LID", "header_X-List-ID")
        sid = column(fields, "header_X-Mailer-SID", "header_X-Mailing-ID")
        if None in (time_logged, rcpt, dsn_diag, bounce_cat, lid, sid):
            print(json.dumps({"file": path, "skipped": "missing columns"}))
            return
        for values in rows:
            if values and values[0] in ("b", "rb"):
                cat = values[bounce_cat]
                kind = "ignore"
                if re.search("bad-mailbox|inactive-mailbox|bad-domain", cat):
                    kind = "hard"
                elif re.search("quota-issues|no-answer-from-host|relaying-issues|routing-errors", cat):
                    kind = "soft"
                print(json.dumps({
                    "type": values[0],
                    "time": values[time_logged],
                    "email": values[rcpt],
                    "bounce_type": kind,
                    "rule": cat.replace("-", "_"),
                    "listids": values[lid].replace(" ", "").split(",") if values[lid] else [],
                    "statid": values[sid],
                }))


for p in sys.argv[1:]:
    parse(p)
