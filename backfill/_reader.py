"""``python -m backfill._reader FD``: the child process of :class:`ProcessProducer`.

A module of its own so that the classes it sends back pickle under their real module
(``backfill.producer``), not ``__main__``.
"""

import sys

from backfill.producer import serve

if __name__ == "__main__":
    serve(int(sys.argv[1]))
