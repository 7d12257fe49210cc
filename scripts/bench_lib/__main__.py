"""`python -m bench_lib` (scripts/bench runs it so, with scripts/ on PYTHONPATH)."""

import sys

from bench_lib.cli import main

sys.exit(main())
