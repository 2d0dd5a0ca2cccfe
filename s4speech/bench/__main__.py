"""``python -m s4speech.bench``: see ``s4speech.bench.run``."""
import sys

from s4speech.bench.run import main

sys.exit(main())
