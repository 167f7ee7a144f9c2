"""Verifies every DKIM signature of each message with dkimpy (not only the first). Keys come
from a file of `NAME<TAB>TXT` lines. Prints one line per message file: its name, then for each
signature, top down, `d=... s=... i=... h=FIELDS verified=True|False` separated by ` | `
(`none` when it has none). Usage: dkim_verify_each.py KEYS FILE..."""
import re
import sys

import dkim
import dkim_keys

dnsfunc = dkim_keys.dnsfunc(sys.argv[1])

for path in sys.argv[2:]:
    message = open(path, "rb").read()
    d = dkim.DKIM(message)
    sigs = [v for (k, v) in d.headers if k.lower() == b"dkim-signature"]
    out = []
    for idx, sig in enumerate(sigs):
        try:
            ok = d.verify(idx=idx, dnsfunc=dnsfunc)
        except dkim.ValidationError:
            ok = False
        text = re.sub(rb"\s+", b"", sig).decode()
        tags = dict(t.split("=", 1) for t in text.split(";") if "=" in t)
        out.append(f"d={tags.get('d')} s={tags.get('s')} i={tags.get('i', '')} h={tags.get('h')} verified={ok}")
    print(path, " | ".join(out) if out else "none")
