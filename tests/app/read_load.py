"""Concurrent readers of one API path, in a process of their own (for test_app_isolation).

usage: python read_load.py BASE_URL PATH READERS

Each reader reads, then pauses 0.1-0.3 s (random, so readers do not move in step), until
stdin is closed; then every read is printed as one JSON list of
``[started, seconds, status, error]`` (``started`` on the system's monotonic clock,
which the test process shares). A separate process, so the load does not compete with
the server for the test process's interpreter.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

import httpx


async def _reader(client: httpx.AsyncClient, path: str, done: asyncio.Event, out: list) -> None:
    while not done.is_set():
        started = time.monotonic()
        try:
            r = await client.get(path)
            error = r.json().get("error") if r.status_code != 200 else None
            out.append([started, time.monotonic() - started, r.status_code, error])
        except httpx.HTTPError as exc:
            out.append([started, time.monotonic() - started, 0, type(exc).__name__])
        await asyncio.sleep(random.uniform(0.1, 0.3))


async def main(url: str, path: str, readers: int) -> list:
    out: list = []
    done = asyncio.Event()
    limits = httpx.Limits(max_connections=readers + 5)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        tasks = [asyncio.create_task(_reader(client, path, done, out)) for _ in range(readers)]
        await asyncio.to_thread(sys.stdin.read)  # until the test closes our stdin
        done.set()
        await asyncio.gather(*tasks)
    return out


if __name__ == "__main__":
    results = asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    sys.stdout.write(json.dumps(results))
