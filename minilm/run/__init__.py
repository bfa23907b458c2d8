"""The run machinery train.py and distill.py share around their loops: not the recipe, the bookkeeping of a run.

    cli.py     options: a frozen dataclass becomes the command line (and its --help)
    runs.py    the options of how a run is run, a batch on the mesh, Ctrl-C, the metrics log, evaluation and saving
    resume.py  checkpoints with the optimizer and data state, and --resume
    atomic.py  a folder written whole or not at all (models and checkpoints), and the crash tests' fault hook
"""
