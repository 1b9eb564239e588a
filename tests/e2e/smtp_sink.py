#!/usr/bin/python3
"""A tiny ESMTP sink for the end-to-end tests (Python stdlib only, asyncio).

    smtp_sink.py --listen 127.0.0.1:10026 --dir DIR [--7bit]

It accepts every message and writes it, byte for byte as the MTA sent it (CRLF line ends,
dot-stuffing removed), to DIR/<name>.eml, where <name> is the value of the message's
X-Signet-Test header (characters outside [A-Za-z0-9._-] replaced by "_"), or "msg-<n>" if it has
none. The envelope goes to DIR/<name>.env. Files appear atomically (written as .tmp, renamed), so
a test can poll for DIR/<name>.eml.

It announces 8BITMIME and SMTPUTF8 so that the MTA relays 8-bit and UTF-8 mail unchanged.
With --7bit it announces neither, like a next hop that only takes 7-bit mail: an MTA must then
either convert 8-bit bodies to 7 bit (which breaks every DKIM signature made before) or send
them as they are; it refuses BODY=8BITMIME (555), as such a server would, and accepts the data
either way. The .env file records the MAIL FROM parameters and whether the data had 8-bit bytes
("8bit-data: yes|no"), so a test can tell what the MTA did. No PIPELINING, no STARTTLS, no AUTH.
Only loopback addresses may be used.
"""

import argparse
import asyncio
import ipaddress
import itertools
import os
import re
import signal
import sys

MAX_LINE = 64 * 1024 * 1024  # one SMTP line; bodies are line-based, this only bounds a broken peer
SAFE = re.compile(rb"[^A-Za-z0-9._-]")
counter = itertools.count(1)


def log(msg):
    sys.stderr.write("smtp_sink: %s\n" % msg)
    sys.stderr.flush()


def message_name(data):
    """The X-Signet-Test header value of the header section, made safe as a file name."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 2]
    match = re.search(rb"(?im)^X-Signet-Test:[ \t]*([^\r\n]+)", head)
    if match:
        name = SAFE.sub(b"_", match.group(1).strip())[:200]
        if name:
            return name.decode("ascii")
    return "msg-%d" % next(counter)


def store(directory, envelope, data):
    name = message_name(data)
    base = os.path.join(directory, name)
    for suffix, payload in ((".env", envelope.encode("utf-8", "replace")), (".eml", data)):
        tmp = base + suffix + ".tmp"
        with open(tmp, "wb") as f:
            f.write(payload)
        os.rename(tmp, base + suffix)
    return name


class Session:
    def __init__(self, reader, writer, directory, seven_bit):
        self.reader = reader
        self.writer = writer
        self.directory = directory
        self.seven_bit = seven_bit
        self.reset()

    def reset(self):
        self.mail_from = None
        self.rcpts = []

    async def reply(self, line):
        self.writer.write(line.encode("ascii") + b"\r\n")
        await self.writer.drain()

    async def read_data(self):
        """The message up to the lone dot, with dot-stuffing removed."""
        chunks = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("connection closed during DATA")
            if line in (b".\r\n", b".\n"):
                return b"".join(chunks)
            if line.startswith(b"."):
                line = line[1:]
            chunks.append(line)

    async def run(self):
        await self.reply("220 sink.signet-e2e.test ESMTP signet e2e sink")
        while True:
            raw = await self.reader.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line[:4].upper()
            if verb == "EHLO":
                await self.reply("250-sink.signet-e2e.test")
                if not self.seven_bit:
                    await self.reply("250-8BITMIME")
                    await self.reply("250-SMTPUTF8")
                await self.reply("250 SIZE 0")
            elif verb == "HELO":
                await self.reply("250 sink.signet-e2e.test")
            elif verb == "MAIL":
                self.reset()
                if self.seven_bit and re.search(r"(?i)\s(BODY=8BITMIME|SMTPUTF8)\b", line):
                    await self.reply("555 5.5.4 8BITMIME and SMTPUTF8 not supported here")
                    continue
                self.mail_from = line[5:].strip()
                await self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                if self.mail_from is None:
                    await self.reply("503 5.5.1 MAIL first")
                    continue
                self.rcpts.append(line[5:].strip())
                await self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                if not self.rcpts:
                    await self.reply("503 5.5.1 RCPT first")
                    continue
                await self.reply("354 End data with <CR><LF>.<CR><LF>")
                data = await self.read_data()
                envelope = "MAIL %s\n%s8bit-data: %s\nsink: %s\n" % (
                    self.mail_from,
                    "".join("RCPT %s\n" % r for r in self.rcpts),
                    "yes" if any(b > 127 for b in data) else "no",
                    "7bit" if self.seven_bit else "8bitmime",
                )
                name = store(self.directory, envelope, data)
                log("stored %s (%d bytes, %d recipients)" % (name, len(data), len(self.rcpts)))
                self.reset()
                await self.reply("250 2.0.0 Ok: stored as %s" % name)
            elif verb == "RSET":
                self.reset()
                await self.reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                await self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                await self.reply("221 2.0.0 Bye")
                return
            else:
                await self.reply("502 5.5.2 Command not implemented")


async def serve(host, port, directory, seven_bit):
    async def handle(reader, writer):
        try:
            await Session(reader, writer, directory, seven_bit).run()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            log("session ended: %s" % e)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, limit=MAX_LINE)
    log("listening on %s:%d%s, storing in %s" % (host, port, " (7 bit only)" if seven_bit else "", directory))
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with server:
        await stop
    log("stopped")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, metavar="ADDR:PORT", help="loopback address and port")
    ap.add_argument("--dir", required=True, help="where to store the messages")
    ap.add_argument("--7bit", dest="seven_bit", action="store_true",
                    help="announce neither 8BITMIME nor SMTPUTF8")
    args = ap.parse_args()
    host, _, port = args.listen.rpartition(":")
    if not ipaddress.ip_address(host.strip("[]")).is_loopback:
        ap.error("--listen must be a loopback address, got %s" % host)
    os.makedirs(args.dir, exist_ok=True)
    asyncio.run(serve(host.strip("[]"), int(port), args.dir, args.seven_bit))


if __name__ == "__main__":
    main()
