"""``python -m cutover``: the same CLI as the ``cutover`` console script."""

from cutover.cli import main

main()
