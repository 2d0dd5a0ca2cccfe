"""Input and output: atomic files, Kaldi tables, audio, experiment dirs, downloads, machine facts.

The lowest layer of the package: nothing here imports torch or ESPnet at module level.
"""
