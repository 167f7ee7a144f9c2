"""RFC 3207 §5 / the 2011 STARTTLS command-injection attacks: a client pipelines a command
after STARTTLS in the same packet. The server must drop it: after the handshake, the first
reply must answer the client's new EHLO, not the injected NOOP. Prints the first reply line
read inside TLS. Usage: starttls_injection.py PORT"""
import socket
import ssl
import sys

port = int(sys.argv[1])
raw = socket.create_connection(("127.0.0.1", port), timeout=10)
f = raw.makefile("rb")
f.readline()  # greeting
raw.sendall(b"EHLO a.test\r\n")
while not f.readline().startswith(b"250 "):
    pass
raw.sendall(b"STARTTLS\r\nNOOP injected\r\n")
print("starttls:", f.readline().decode().strip())
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
tls = ctx.wrap_socket(raw, server_hostname="relay.test")
tls.sendall(b"EHLO b.test\r\n")
line = tls.makefile("rb").readline().decode().strip()
print("first in tls:", line)
print("version:", tls.version())
