"""Training: configuration (:mod:`.config`), packed batches (:mod:`.batch`), SFT warm start (:mod:`.sft`), the RL loop
(:mod:`.rl`), checkpoints (:mod:`.checkpoint`) and metrics logging (:mod:`.metrics`).

Submodules are imported on use so that ``import empg.train.config`` stays light.
"""
