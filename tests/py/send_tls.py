"""Sends one message of LINES lines through STARTTLS and AUTH with smtplib.
Usage: send_tls.py PORT USER PASSWORD RCPT LINES"""
import smtplib
import ssl
import sys

port, user, password, rcpt, lines = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
body = "".join(f"line {i:07} " + "x" * 60 + "\r\n" for i in range(lines))
with smtplib.SMTP("127.0.0.1", port) as s:
    s.starttls(context=ctx)
    s.login(user, password)
    s.sendmail("s@src.test", [rcpt], "Subject: big\r\n\r\n" + body)
