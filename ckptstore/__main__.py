"""``python -m ckptstore``: the same command line as the ``ckptstore`` script."""

import sys

from ckptstore.cli import main

sys.exit(main())
