"""Verifies the DKIM signature of each message file with dkimpy, answering every
`SELECTOR._domainkey.*` key query with one TXT record (a signer whose `domain-key` is `*`
publishes the same key under every domain it signs for). Prints per file: `FILE none` (no
signature), or `FILE d=DOMAIN pass|fail`.

Usage: dkim_verify_any.py SELECTOR TXT-FILE FILE..."""
import re
import sys

import dkim

selector = sys.argv[1].encode()
txt = open(sys.argv[2], "rb").read().strip()


def dnsfunc(name, timeout=5):
    return txt if name.startswith(selector + b"._domainkey.") else None


for path in sys.argv[3:]:
    message = open(path, "rb").read()
    if not re.search(rb"(?im)^DKIM-Signature:", message):
        print(path, "none")
        continue
    try:
        ok = dkim.DKIM(message).verify(dnsfunc=dnsfunc)
    except Exception:
        ok = False
    d = re.search(rb"\bd=([^;\s]+)", message[message.lower().index(b"dkim-signature:"):]).group(1).decode()
    print(path, f"d={d}", "pass" if ok else "fail")
