"""The Ops level: config.json and command-line settings, local packages, and the recipes
behind ``pyops build``, ``run`` and ``pkg load``."""
