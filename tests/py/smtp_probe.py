"""Walks one SMTP session and prints the reply code of each step, for open-relay and
sender-restriction tables. Usage:
  smtp_probe.py PORT SOURCE_IP FROM TO [--auth USER:PASSWORD]... [--header 'Name: value'] [--data]
Prints e.g. `auth=235 mail=250 rcpt=250 data=250` (a step not reached is left out; `closed`
when the server ends the session)."""
import base64
import smtplib
import sys

port, source, sender, rcpt = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
rest = sys.argv[5:]
auths = [rest[i + 1] for i, a in enumerate(rest) if a == "--auth"]
headers = [rest[i + 1] for i, a in enumerate(rest) if a == "--header"]
out = []
s = smtplib.SMTP()
try:
    s.connect("127.0.0.1", port, source_address=(source, 0))
    s.ehlo("probe.test")
    for cred in auths:
        user, password = cred.split(":", 1)
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        out.append(f"auth={s.docmd('AUTH', 'PLAIN ' + token)[0]}")
    code = s.docmd("MAIL", f"FROM:<{sender}>")[0]
    out.append(f"mail={code}")
    if code == 250:
        code = s.docmd("RCPT", f"TO:<{rcpt}>")[0]
        out.append(f"rcpt={code}")
        if code == 250 and "--data" in rest:
            s.docmd("DATA")
            body = "".join(h + "\r\n" for h in headers) + "Subject: probe\r\n\r\nhello\r\n.\r\n"
            s.send(body.encode())
            out.append(f"data={s.getreply()[0]}")
except smtplib.SMTPServerDisconnected:
    out.append("closed")
print(" ".join(out))
