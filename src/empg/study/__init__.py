"""Experiment tooling: grids of runs (:mod:`.sweep`), their Markdown report (:mod:`.report`) and the Proposition 1
diagnostic on a trained policy (:mod:`.prop1`). Each module backs one CLI command: ``empg sweep``, ``empg report``,
``empg prop1``."""
