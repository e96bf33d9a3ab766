"""``python -m mailapp.cli``: the ``mailapp`` command without its installed script (the tests run it so)."""

import sys

from mailapp.cli import main

sys.exit(main())
