"""Publishing: ``ft card`` (a model or dataset card written from ft's own records) and ``ft push`` (to the Hub).

    ft card runs/doric
    ft push runs/doric --repo me/doric-smollm2 --dry-run
"""
