"""``python -m pathoai_memobs`` runs the command line."""

import sys

from .tools.cli import main

sys.exit(main())
