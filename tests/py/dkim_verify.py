"""Verifies the DKIM signatures of messages with dkimpy, an implementation independent of
the one that signed them. Keys come from a file of `NAME<TAB>TXT` lines (the DNS TXT records
the signer's operator would publish). Prints, per message file: its name, then `none` when
it has no DKIM-Signature, else `d=... s=... a=... verified=True|False`.
Usage: dkim_verify.py KEYS FILE..."""
import re
import sys

import dkim
import dkim_keys

dnsfunc = dkim_keys.dnsfunc(sys.argv[1])

for path in sys.argv[2:]:
    message = open(path, "rb").read()
    if b"DKIM-Signature:" not in message:
        print(path, "none")
        continue
    try:
        ok = dkim.DKIM(message).verify(dnsfunc=dnsfunc)
    except dkim.ValidationError:
        ok = False
    sig = message[message.index(b"DKIM-Signature:"):].split(b"\r\n\r\n")[0].decode()
    tags = {k: v for k, v in re.findall(r"\b([asd])=([^;\s]+)", sig)}
    print(path, f"d={tags.get('d')} s={tags.get('s')} a={tags.get('a')} verified={ok}")
