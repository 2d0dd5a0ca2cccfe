import sys

from s4speech.transcribe.cli import main

sys.exit(main())
