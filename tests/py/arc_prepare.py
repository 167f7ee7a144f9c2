"""Makes a message as an upstream hop would hand it on: DKIM-signed by its author's domain
and ARC-sealed (instance 1) by a first relay, with dkimpy. The message comes on stdin and
goes to stdout. Usage: arc_prepare.py DKIM_KEY.pem ARC_KEY.pem"""
import sys

import dkim

msg = sys.stdin.buffer.read()
dkim_key = open(sys.argv[1], "rb").read()
arc_key = open(sys.argv[2], "rb").read()
sig = dkim.sign(msg, b"d1", b"sender.test", dkim_key, include_headers=[b"From", b"To", b"Subject", b"Date"])
msg = sig + msg
msg = b"Authentication-Results: mx.hop1.test; dkim=pass header.d=sender.test\r\n" + msg
seal = dkim.arc_sign(msg, b"arc1", b"hop1.test", arc_key, b"mx.hop1.test")
assert seal, "dkimpy made no ARC set"
sys.stdout.buffer.write(b"".join(seal) + msg)
