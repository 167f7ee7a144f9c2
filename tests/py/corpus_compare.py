"""Compares each received message with the corpus file it came from (its `X-Corpus:` header
names it), as a reader sees them: every header field decoded (RFC 2047 words, addresses as
(name, address) pairs), and every MIME part's content type and decoded payload. What the
relay put on top (its DKIM-Signature and Received fields) is left out. Prints per file
`FILE same`, or `FILE differs: WHAT`.

Usage: corpus_compare.py CORPUS-DIR FILE..."""
import email
import email.policy
import email.utils
import os
import re
import sys
from email.header import Header, decode_header

ADDRESS_FIELDS = {"from", "sender", "reply-to", "to", "cc", "bcc", "resent-from", "resent-to", "resent-cc"}


def raw(v):
    """A header value as bytes, RFC 2047 words decoded to the bytes they carry (whatever their
    charset: `utf-8`, a legacy one, or `unknown-8bit`), whitespace collapsed."""
    if not isinstance(v, Header):  # a Header is compat32's 8-bit value: its bytes as sent
        v = str(v)
    try:
        chunks = decode_header(v)
    except Exception:
        chunks = [(str(v), None)]
    out = b""
    for chunk, _charset in chunks:
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8", "surrogateescape")
        out += chunk if not out or not chunk else b" " + chunk
    return b" ".join(out.split())


# Changed by a 7-bit conversion as RFC 2045 wants (the parts' types and decoded contents are
# compared instead).
MIME_FIELDS = {"content-transfer-encoding", "mime-version", "content-type"}


def headers(msg):
    out = []
    for name, value in msg.items():
        name = name.lower()
        if name in MIME_FIELDS:
            continue
        if name in ADDRESS_FIELDS:
            pairs = email.utils.getaddresses([raw(value).decode("utf-8", "replace")])
            out.append((name, tuple((" ".join(n.split()), a.lower()) for n, a in pairs)))
        else:
            out.append((name, raw(value)))
    return out


def filename(p):
    """A part's file name as bytes: raw 8-bit, RFC 2047 or RFC 2231 (decoded by its charset)."""
    for field, param in (("content-disposition", b"filename"), ("content-type", b"name")):
        h = p.get(field)
        if isinstance(h, Header):  # raw 8-bit: the bytes as sent
            value = b"".join(c if isinstance(c, bytes) else c.encode() for c, _ in decode_header(h))
            m = re.search(rb"(?i)\b" + param + rb'="?([^";]+)', value)
            if m:
                return m.group(1)
    v = p.get_param("filename", header="content-disposition") or p.get_param("name")
    if v is None:
        return None
    if isinstance(v, tuple):
        return email.utils.collapse_rfc2231_value(v).encode("utf-8", "surrogateescape")
    return raw(email.utils.unquote(str(v)))


def parts(msg):
    out = []
    for p in msg.walk():
        if p.is_multipart():
            out.append((p.get_content_type(), None, None))
            continue
        payload = p.get_payload(decode=True) or b""
        out.append((p.get_content_type(), filename(p), payload.replace(b"\r\n", b"\n")))
    return out


def load(data):
    return email.message_from_bytes(data, policy=email.policy.compat32)


corpus = sys.argv[1]
for path in sys.argv[2:]:
    received = open(path, "rb").read()
    at = received.find(b"X-Corpus: ")
    name = received[at + 10:received.index(b"\r\n", at)].decode()
    received = received[at:]
    original = open(os.path.join(corpus, name), "rb").read()
    if original.startswith(b"From ") and not original.startswith(b"From: "):
        original = original.split(b"\n", 1)[1] if b"\n" in original else b""
    original = b"X-Corpus: " + name.encode() + b"\r\n" + re.sub(rb"\r?\n|\r", b"\r\n", original)
    if not original.endswith(b"\r\n"):
        original += b"\r\n"  # SMTP's DATA ends with a whole line (RFC 5321 §4.1.1.4)
    a, b = load(original), load(received)
    ha, hb = headers(a), headers(b)
    if ha != hb:
        diff = [(x, y) for x, y in zip(ha, hb) if x != y][:1] or [(len(ha), len(hb))]
        print(path, "differs: headers", repr(diff)[:300])
        continue
    pa, pb = parts(a), parts(b)
    if pa != pb:
        diff = [(x[:2], y[:2]) for x, y in zip(pa, pb) if x != y][:1] or [(len(pa), len(pb))]
        print(path, "differs: parts", repr(diff)[:300])
        continue
    print(path, "same")
