"""Injects every message file under the given directories through SMTP (smtplib, one
connection, RSET between messages), each to all the recipients given, with an `X-Corpus:`
header naming its file on top. Line ends become CRLF; an mbox `From ` line at the top goes.
Prints `sent FILE` or `refused FILE CODE TEXT` per file.

Usage: corpus_send.py HOST PORT RCPT[,RCPT...] DIR..."""
import os
import re
import smtplib
import sys

host, port, rcpts = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
files = sorted(os.path.join(d, f) for d in sys.argv[4:] for f in os.listdir(d))
with smtplib.SMTP(host, port, timeout=60) as s:
    s.ehlo("corpus.test")
    for path in files:
        data = open(path, "rb").read()
        if data.startswith(b"From ") and not data.startswith(b"From: "):
            data = data.split(b"\n", 1)[1] if b"\n" in data else b""
        data = re.sub(rb"\r?\n|\r", b"\r\n", data)
        name = os.path.relpath(path, os.path.dirname(os.path.dirname(path)))
        data = f"X-Corpus: {name}\r\n".encode() + data
        try:
            s.sendmail("s@src.test", rcpts, data)
            print("sent", name, flush=True)
        except smtplib.SMTPResponseException as e:
            print("refused", name, e.smtp_code, e.smtp_error.decode(errors="replace"), flush=True)
            s.rset()
        except smtplib.SMTPRecipientsRefused as e:
            print("refused", name, e, flush=True)
            s.rset()
