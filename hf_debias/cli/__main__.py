"""``python -m hf_debias.cli``: the same as the ``hf-debias`` console script."""

import sys

from . import main

sys.exit(main())
