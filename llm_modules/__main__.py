"""``python -m llm_modules`` is the same as the ``llm-modules`` command."""

import sys

from llm_modules.cli import main

if __name__ == "__main__":  # not when a spawned worker process imports this module as its main
    sys.exit(main())
