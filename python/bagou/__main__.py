"""`python3 -m bagou ARGS`: the bagou-api command line (bagou/api.py)
without installing the package, e.g. PYTHONPATH=python from a checkout."""

import sys

from .api import main

sys.exit(main())
