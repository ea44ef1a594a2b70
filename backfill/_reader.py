"""``python -m backfill._reader FD``: the child process of :class:`ProcessProducer`.

A module of its own so that the classes it sends back pickle under their real module
(``backfill.producer``), not ``__main__``.

Once served, the child ends with ``os._exit``: it holds nothing to flush (it only
reads and hands batches over), and tearing its heap down the orderly way kept the
parent waiting 30-60 ms at the end of every run (measured on the benchmark).
"""

import os
import sys

from backfill.producer import serve

if __name__ == "__main__":
    serve(int(sys.argv[1]))
    os._exit(0)
