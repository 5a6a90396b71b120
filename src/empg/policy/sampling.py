"""How a policy samples a response: the one set of generation settings every layer passes down.

:meth:`empg.policy.Policy.generate`, :meth:`empg.policy.vllm.VLLMPolicy.generate`, :func:`empg.rollout.collect`,
:func:`empg.rollout.collect_with_envs` and :func:`empg.eval.evaluate.evaluate_policy` all take one
:class:`SamplingParams`, so a setting is named, defaulted and checked in one place.

>>> SamplingParams(temperature=0.4, max_new_tokens=48)
SamplingParams(temperature=0.4, top_p=1.0, max_new_tokens=48, greedy=False, jump_forward=False)
>>> SamplingParams(temperature=0)
Traceback (most recent call last):
...
ValueError: temperature must be > 0 (use greedy=True for argmax), got 0
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    """Generation settings of one response per prompt.

    Attributes:
        temperature: softmax temperature (> 0). Behaviour log-probs and entropies are those of the distribution at
            this temperature, also when ``greedy``.
        top_p: nucleus threshold in (0, 1] (1 = off).
        max_new_tokens: cap on the tokens of one response (>= 1).
        greedy: argmax decoding instead of sampling.
        jump_forward: in constrained decoding, feed every token the trie forces (a node with one child: log-prob 0,
            entropy 0) to the model in the same forward as the token sampled before it, instead of one decode
            step each (the hf back end; others ignore it). The same distribution of responses and the same
            recorded quantities (to float rounding), in fewer forwards; the random stream differs, because forced
            tokens no longer draw a number, so a run's samples are not those of a run without it.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    greedy: bool = False
    jump_forward: bool = False

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


DEFAULT_SAMPLING = SamplingParams()  # T = 1, no nucleus, 64 new tokens: training rollouts' defaults
