"""
A scripted SMTP server for the rig: another domain's MX whose replies the
test chooses, which records every transaction it sees. A subprocess, run
inside a host's network namespace:

    python smtp_peer.py SCRIPT.json

``SCRIPT.json`` (written by L{tests.rig.peer.ScriptedSMTPPeer})::

    {"addresses": ["192.0.2.11", "2001:db8::11"], "port": 25,
     "hostname": "mx.b.test", "record": "/path/transactions.jsonl",
     "data_replies": ["451 4.3.0 try again later", "250 2.0.0 Ok"]}

The n-th transaction's end of data is answered with ``data_replies[n]`` (the
last one repeats), every other command with its usual positive reply. No
STARTTLS, no PIPELINING: a plain RFC 5321 peer. Each transaction, accepted or
not, is one JSON line in ``record``: ``{"n", "client", "helo", "mail_from",
"rcpt_to", "data", "reply"}``, written and flushed before the reply is sent.
Prints ``ready`` on stdout once listening; runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any


class Peer:
    def __init__(self, script: dict[str, Any]) -> None:
        self.script = script
        self.transactions = 0
        self.record = open(script["record"], "a", encoding="utf-8")

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")[0]
        hostname = self.script["hostname"]

        async def reply(text: str) -> None:
            writer.write(text.encode() + b"\r\n")
            await writer.drain()

        await reply(f"220 {hostname} ESMTP scripted peer")
        helo, mail_from, rcpt_to = "", None, []
        try:
            while True:
                line = await asyncio.wait_for(reader.readline(), 60)
                if not line:
                    return
                command = line.decode("ascii", "replace").rstrip("\r\n")
                verb = command.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    helo = command[5:]
                    await reply(f"250-{hostname}\r\n250-8BITMIME\r\n250 SIZE 10485760")
                elif verb == "HELO":
                    helo = command[5:]
                    await reply(f"250 {hostname}")
                elif verb == "MAIL":
                    mail_from, rcpt_to = command[10:].split(" ", 1)[0], []
                    await reply("250 2.1.0 Ok")
                elif verb == "RCPT":
                    rcpt_to.append(command[8:].split(" ", 1)[0])
                    await reply("250 2.1.5 Ok")
                elif verb == "DATA":
                    await reply("354 End data with <CR><LF>.<CR><LF>")
                    data = b""
                    while not data.endswith(b"\r\n.\r\n") and data != b".\r\n":
                        chunk = await asyncio.wait_for(reader.readline(), 60)
                        if not chunk:
                            return
                        data += chunk
                    replies = self.script["data_replies"]
                    answer = replies[min(self.transactions, len(replies) - 1)]
                    self.transactions += 1
                    self.record.write(
                        json.dumps(
                            {
                                "n": self.transactions,
                                "client": client,
                                "helo": helo,
                                "mail_from": mail_from,
                                "rcpt_to": rcpt_to,
                                "data": data[: -len(b".\r\n")].decode("utf-8", "replace"),
                                "reply": answer,
                            }
                        )
                        + "\n"
                    )
                    self.record.flush()
                    mail_from, rcpt_to = None, []
                    await reply(answer)
                elif verb == "RSET":
                    mail_from, rcpt_to = None, []
                    await reply("250 2.0.0 Ok")
                elif verb == "NOOP":
                    await reply("250 2.0.0 Ok")
                elif verb == "QUIT":
                    await reply("221 2.0.0 Bye")
                    return
                else:
                    await reply("502 5.5.1 not implemented")
        except (asyncio.TimeoutError, ConnectionError):
            return
        finally:
            writer.close()


async def main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        script = json.load(f)
    peer = Peer(script)
    servers = [await asyncio.start_server(peer.session, address, script["port"]) for address in script["addresses"]]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await stop.wait()
    for listening in servers:
        listening.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
