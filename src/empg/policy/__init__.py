"""Policies: a Hugging Face causal LM + tokenizer that generates and scores (:mod:`empg.policy.hf`).

>>> from empg.policy import Policy
>>> policy = Policy.from_spec("tiny-1m")  # doctest: +SKIP
"""

from empg.policy.hf import Generation, Policy, default_cache_dir, response_logprobs

__all__ = ["Generation", "Policy", "default_cache_dir", "response_logprobs"]
