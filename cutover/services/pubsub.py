"""Pub/Sub: cloudbox's pure-Python gRPC server (Google's emulator cannot be installed).

Clients reach it like the official emulator, through ``PUBSUB_EMULATOR_HOST``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from cutover.services import _install, _proc
from cutover.services._model import HOST, Context, Record, ServiceInfo, Spec

NAME = "pubsub"
PROJECT = "cutover-local"
_RUNNER = Path(__file__).with_name("_pubsub_server.py")
BOOT_TIMEOUT_S = 30.0


def start(ctx: Context, deps: Mapping[str, ServiceInfo]) -> Record:
    _install.ensure_cloudbox()
    log = ctx.service_dir(NAME) / f"{NAME}.log"
    port = _proc.port_or_free(ctx.ports.get(NAME))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDBOX_")}
    env["PYTHONUNBUFFERED"] = "1"
    argv = [sys.executable, str(_RUNNER), "--host", HOST, "--port", str(port)]
    proc = _proc.spawn(argv, log_path=log, env=env, cwd=ctx.service_dir(NAME))
    ticks = _proc.start_ticks(proc.pid)
    info = ServiceInfo(NAME, HOST, port, proc.pid, f"{HOST}:{port}", log)
    return _proc.started(info, ticks, check, BOOT_TIMEOUT_S)


def check(info: ServiceInfo) -> tuple[bool, str]:
    """List the topics of the project through Google's own client over gRPC.

    The client is pointed at the server with an explicit insecure channel, which is
    what ``PUBSUB_EMULATOR_HOST`` does, without changing this process's environment.
    """
    import grpc
    from google.api_core import exceptions
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    channel = grpc.insecure_channel(info.url)
    try:
        client = pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel))
        topics = list(client.list_topics(request={"project": f"projects/{PROJECT}"}, timeout=3))
        return True, f"ok ({len(topics)} topics in {PROJECT})"
    except (exceptions.GoogleAPIError, grpc.RpcError) as exc:
        return False, f"ListTopics failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    finally:
        channel.close()


SPEC = Spec(NAME, start, check)
