"""Local servers the project runs against: install, start, stop and check them.

``up()`` starts, each on a free 127.0.0.1 port (its last one again when nothing else
listens there) with its own directory under ``<state_dir>/services/<name>/``:

* ``pubsub``: cloudbox's gRPC Pub/Sub server (clients use ``PUBSUB_EMULATOR_HOST``);
* ``rethinkdb``: reqlite, a RethinkDB-compatible server (npm);
* ``postgres``: a private PostgreSQL cluster (databases ``cutover`` and ``unleash``);
* ``unleash``: unleash-server (npm) on that PostgreSQL.

PIDs, ports and tokens go to ``<state_dir>/services/state.json`` (0600) so that
``down()``/``status()`` work from any process; the ``CUTOVER_*`` settings for them go
to ``<state_dir>/services.env``, which :mod:`core.settings` reads.
"""

from cutover.services._api import ALL, DEFAULT_STATE_DIR, down, env_for, status, up
from cutover.services._model import ServiceError, ServiceInfo

__all__ = [
    "ALL",
    "DEFAULT_STATE_DIR",
    "ServiceError",
    "ServiceInfo",
    "down",
    "env_for",
    "status",
    "up",
]
