"""``python -m llm_modules`` is the same as the ``llm-modules`` command."""

import sys

from llm_modules.cli import main

sys.exit(main())
