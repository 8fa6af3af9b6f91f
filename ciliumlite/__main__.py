"""``python -m ciliumlite``: exactly the ``ciliumlite`` console script."""

from ciliumlite.cli.app import main

main()
