"""A byte-exact SMTP receiver for tests (aiosmtpd): every message is written, as received
(dot-unstuffed, CRLF line ends), to DIR/NNNNN.eml, its envelope to DIR/NNNNN.env (MAIL FROM,
the recipients, MAIL's parameters, then the client's address and EHLO name).

Usage: receiver.py HOST PORT DIR [--rcvbuf BYTES] [--tls CERT KEY] [--max-rcpt N] [--no-8bitmime] [--delay-ms N]
                   [--auth USER PASSWORD [--auth-only MECHANISM]]

--rcvbuf sets SO_RCVBUF on the listening socket (accepted sockets inherit it), so a large
message comes in through a small window and the sender's writes come back short many times.
--tls offers STARTTLS. --max-rcpt N answers `452 4.5.3 Too many recipients` past N recipients
in a transaction (RFC 5321 4.5.3.1.10). --no-8bitmime leaves 8BITMIME out of the EHLO reply. --delay-ms N waits
that long between keeping a message and answering 250 (a sender killed meanwhile does not know).
--auth requires AUTH (aiosmtpd's PLAIN and LOGIN, and CRAM-MD5 per RFC 2195 here), inside TLS
when --tls is given; the login name is the .env file's fifth line. --auth-only offers one
mechanism.
"""
import base64
import hashlib
import hmac
import argparse
import asyncio
import os
import socket
import ssl
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword, auth_mechanism

ap = argparse.ArgumentParser()
ap.add_argument("host")
ap.add_argument("port", type=int)
ap.add_argument("directory")
ap.add_argument("--rcvbuf", type=int, default=0)
ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
ap.add_argument("--max-rcpt", type=int, default=0)
ap.add_argument("--no-8bitmime", action="store_true")
ap.add_argument("--auth", nargs=2, metavar=("USER", "PASSWORD"))
ap.add_argument("--auth-only")
ap.add_argument("--delay-ms", type=int, default=0)
args = ap.parse_args()


class Keep:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if args.no_8bitmime:
            return [r for r in responses if "8BITMIME" not in r]
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if args.max_rcpt and len(envelope.rcpt_tos) >= args.max_rcpt:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        path = os.path.join(self.directory, f"{self.count:05}")
        self.count += 1
        with open(path + ".tmp", "wb") as f:
            f.write(envelope.original_content)
        with open(path + ".env", "w") as f:
            f.write(f"{envelope.mail_from}\n{','.join(envelope.rcpt_tos)}\n{' '.join(envelope.mail_options)}\n")
            # Where it came from: the sender's address and its EHLO name.
            f.write(f"{session.peer[0]} {session.host_name}\n")
            login = session.auth_data
            f.write(f"{login.decode() if isinstance(login, bytes) else login or ''}\n")
        os.rename(path + ".tmp", path + ".eml")
        if args.delay_ms:
            # Kept, not yet acknowledged: a sender that dies now has it delivered unknowingly.
            await asyncio.sleep(args.delay_ms / 1000)
        return "250 2.0.0 kept"


    @auth_mechanism("CRAM-MD5")
    async def auth_CRAM_MD5(self, server, _args):
        """RFC 2195: a challenge, then `user hex(HMAC-MD5(password, challenge))`."""
        challenge = f"<{os.getpid()}.{time.time_ns()}@receiver.test>".encode()
        answer = await server.challenge_auth(challenge)
        if not isinstance(answer, bytes) or b" " not in answer:
            return AuthResult(success=False, handled=False)
        user, digest = answer.decode().rsplit(" ", 1)
        expected = hmac.new(args.auth[1].encode(), challenge, hashlib.md5).hexdigest()
        ok = user == args.auth[0] and hmac.compare_digest(digest, expected)
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        args.auth[0].encode(),
        args.auth[1].encode(),
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)


class Receiver(Controller):
    def _create_server(self):
        if not args.rcvbuf:
            return super()._create_server()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
        sock.bind((self.hostname, self.port))
        sock.listen(128)
        return self.loop.create_server(self._factory_invoker, sock=sock, ssl=self.ssl_context)


kwargs = {"decode_data": False, "data_size_limit": 200 * 1024 * 1024}
if args.tls:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.tls[0], args.tls[1])
    kwargs["tls_context"] = ctx
if args.auth:
    kwargs["authenticator"] = authenticator
    kwargs["auth_required"] = True
    kwargs["auth_require_tls"] = bool(args.tls)
    if args.auth_only:
        kwargs["auth_exclude_mechanism"] = [m for m in ("PLAIN", "LOGIN", "CRAM-MD5") if m != args.auth_only]
controller = Receiver(Keep(args.directory), hostname=args.host, port=args.port, **kwargs)
controller.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
