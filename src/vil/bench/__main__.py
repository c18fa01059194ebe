"""``python -m vil.bench ...`` == ``vil bench ...``."""

import sys

from ..cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
