"""Policies: a Hugging Face causal LM + tokenizer that generates (:mod:`empg.policy.hf`); the trainer's
differentiable forward is :mod:`empg.train.forward`.

>>> from empg.policy import Policy
>>> from empg.rollout.corpus import env_corpus
>>> policy = Policy.from_spec("tiny-1m", corpus=env_corpus)  # doctest: +SKIP
"""

from empg.policy.hf import Generation, Policy, default_cache_dir
from empg.policy.sampling import SamplingParams

__all__ = ["Generation", "Policy", "SamplingParams", "default_cache_dir"]
