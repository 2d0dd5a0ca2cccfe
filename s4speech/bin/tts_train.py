"""Drop-in for ``espnet2.bin.tts_train`` with s4speech's components registered (same options)."""
import s4speech  # noqa: F401  registers the 'ssm' components (tts: ssm)
from espnet2.bin.tts_train import main

if __name__ == "__main__":
    main()
