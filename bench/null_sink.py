"""
A null SMTP sink (asyncio): answers every command and stores nothing. The
harness runs the generator against it to show the generator's own ceiling,
so a server figure near it says "the generator was the bottleneck".
"""

from __future__ import annotations

import asyncio
import sys


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 sink ESMTP\r\n")
    data_mode = False
    while True:
        line = await reader.readline()
        if not line:
            break
        if data_mode:
            if line == b".\r\n":
                data_mode = False
                writer.write(b"250 2.0.0 Ok\r\n")
            continue
        verb = line[:4].upper()
        if verb == b"DATA":
            data_mode = True
            writer.write(b"354 go ahead\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 bye\r\n")
            await writer.drain()
            break
        elif verb == b"EHLO":
            writer.write(b"250-sink\r\n250-8BITMIME\r\n250 PIPELINING\r\n")
        else:
            writer.write(b"250 Ok\r\n")
    writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
