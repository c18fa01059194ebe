"""``python -m vil ...`` == ``vil ...``."""

import sys

from .cli import main

sys.exit(main())
