"""DKIM keys for dkimpy, from a file of `NAME<TAB>TXT` lines (the DNS TXT records the signer's
operator would publish): `dnsfunc(path)` answers dkimpy's key queries from it."""


def dnsfunc(path):
    records = {}
    with open(path) as f:
        for line in f:
            name, txt = line.rstrip("\n").split("\t", 1)
            records[name.encode() + b"."] = txt.encode()
            records[name.encode()] = txt.encode()

    def lookup(name, timeout=5):
        return records.get(name)

    return lookup
