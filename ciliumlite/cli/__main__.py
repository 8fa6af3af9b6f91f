"""``python -m ciliumlite.cli``: the same as the ``ciliumlite`` console script."""

from ciliumlite.cli.app import main

main()
