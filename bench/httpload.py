"""A minimal HTTP/1.1 load generator for the benchmarks: pre-built requests over keep-alive connections.

The load generator shares the machine with the server it measures, so it must cost little: no HTTP client
library, no per-request objects beyond a few bytes (httpx costs several ms of CPU per request under load,
this about a tenth of a millisecond).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import math
import os
import time
from pathlib import Path

MAX_CONNECTIONS = 256


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.body = b""  # the last answer's body

    async def post(self, head: bytes, body: bytes) -> int:
        """Send head (ending in 'Content-Length: ') and body; the answer's status (its body in self.body)."""
        self.writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("closed by the server")  # an idle keep-alive connection timed out
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        self.body = await self.reader.readexactly(length)
        return int(status_line.split()[1])


async def connect(port: int) -> Conn:
    """A new connection to 127.0.0.1:port."""
    return Conn(*await asyncio.open_connection("127.0.0.1", port))


def post_head(port: int, path: str, key: str) -> bytes:
    """The head of a POST with the key as HTTP Basic username, up to the Content-Length value."""
    auth = base64.b64encode(f"{key}:".encode()).decode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {auth}\r\n"
            "Content-Type: application/json\r\nContent-Length: ").encode()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def open_loop(port: int, head: bytes, bodies: list[bytes], rate: float, *, warmup: int = 0,
                    server_pid: int | None = None, connections: int = 32
                    ) -> tuple[list[float], int, float, float | None]:
    """Send bodies on a fixed schedule whatever the answers do.

    Returns the latencies (s) of the requests after the first warmup ones, from each request's scheduled
    start to the end of its answer (nan for a failed one, so queueing and failures show), the number of
    failed measured requests, the achieved rate, and the server's CPU seconds per measured request.
    """
    idle: list[Conn] = []
    latencies = [math.nan] * len(bodies)
    slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def one(i: int, scheduled: float) -> None:
        async with slots:  # past MAX_CONNECTIONS in flight, a request waits here, and its latency grows
            conn = idle.pop() if idle else await connect(port)
            try:
                try:
                    status = await conn.post(head, bodies[i])
                except ConnectionResetError:  # nothing was answered: send it again on a new connection
                    conn = await connect(port)
                    status = await conn.post(head, bodies[i])
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                return
            if status == 200:
                latencies[i] = time.perf_counter() - scheduled
            idle.append(conn)

    # The load generator is a Python process too: a full collection of everything its script imported
    # (numpy, scikit-learn, the simulator) stops it for 50 ms and more, and would count as server latency.
    gc.collect()
    gc.freeze()
    for _ in range(connections):  # connections a shop's visitors would hold open anyway
        idle.append(await connect(port))
    tasks = []
    start = time.perf_counter() + 0.05
    cpu0 = None
    for i in range(len(bodies)):
        if i == warmup and server_pid is not None:
            cpu0 = cpu_seconds(server_pid)
        at = start + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, at)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    cpu = None
    if server_pid is not None:
        cpu = (cpu_seconds(server_pid) - (cpu0 or 0.0)) / max(len(bodies) - warmup, 1)
    for c in idle:
        c.writer.close()
    measured = latencies[warmup:]
    return measured, sum(1 for x in measured if math.isnan(x)), len(bodies) / elapsed, cpu


def run(coro):  # type: ignore[no-untyped-def]
    """Run a coroutine on uvloop where it is installed (cheaper per request than asyncio's own loop)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
