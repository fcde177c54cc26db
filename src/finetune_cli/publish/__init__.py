"""Publishing: ``ft card`` (a model or dataset card written from ft's own records) and ``ft push`` (to the Hub)."""
