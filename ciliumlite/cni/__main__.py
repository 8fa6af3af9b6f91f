"""``python -m ciliumlite.cni``: the same as the ``ciliumlite-cni`` executable."""

import sys

from ciliumlite.cni.plugin import main

sys.exit(main())
