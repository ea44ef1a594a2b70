"""Run cloudbox's Pub/Sub gRPC server alone, on one loopback port.

Why not the ``cloudbox`` command: it starts about ten servers (GCS, Firestore, admin
UI, ...) on fixed ports (8080, 8085, 8888, ...) bound to 0.0.0.0, which would collide
with this machine's own servers. Only ``create_server(host, port)`` is needed.
State is in memory (like Google's emulator): a restart starts empty.

Run as a script (``python _pubsub_server.py --port N``) so it imports nothing from
cutover; ``cutover.services.pubsub`` patches cloudbox before starting it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal


async def _serve(host: str, port: int) -> None:
    from cloudbox.services.pubsub.grpc_server import create_server

    server = await create_server(host, port)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logging.getLogger("cutover.pubsub").info("Pub/Sub gRPC server ready on %s:%d", host, port)
    await stop.wait()
    await server.stop(grace=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
