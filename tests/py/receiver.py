"""A byte-exact SMTP receiver for tests (aiosmtpd): every message is written, as received
(dot-unstuffed, CRLF line ends), to DIR/NNNNN.eml. Usage: receiver.py HOST PORT DIR"""
import os
import sys
import time

from aiosmtpd.controller import Controller


class Keep:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        path = os.path.join(self.directory, f"{self.count:05}.eml")
        self.count += 1
        with open(path + ".tmp", "wb") as f:
            f.write(envelope.original_content)
        os.rename(path + ".tmp", path)
        return "250 2.0.0 kept"


host, port, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
controller = Controller(Keep(directory), hostname=host, port=port, decode_data=False)
controller.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
