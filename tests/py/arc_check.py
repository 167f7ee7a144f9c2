"""Validates a delivered message's ARC chain with dkimpy, and prints sluice's
Authentication-Results. Keys come from `NAME<TAB>TXT` lines. Usage: arc_check.py KEYS FILE"""
import sys

import dkim

records = {}
with open(sys.argv[1]) as f:
    for line in f:
        name, txt = line.rstrip("\n").split("\t", 1)
        records[name.encode()] = txt.encode()
        records[name.encode() + b"."] = txt.encode()
message = open(sys.argv[2], "rb").read()
cv, results, comment = dkim.arc_verify(message, dnsfunc=lambda name, timeout=5: records.get(name))
print("cv", cv.decode() if cv else "fail", comment)
print("instances", " ".join(str(r["instance"]) for r in results))
head = message.split(b"\r\n\r\n")[0].decode()
unfolded = head.replace("\r\n\t", " ").replace("\r\n ", " ")
for line in unfolded.split("\r\n"):
    if line.startswith("Authentication-Results: relay.test"):
        print("ar", line)
