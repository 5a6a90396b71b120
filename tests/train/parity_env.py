"""A two-step test env whose outcome is a coin flip on the policy's own choice, so GRPO groups are informative.

Used as ``env.id=parity_env:ParityEnv`` with ``rollout.constrain_actions=true`` (``empg.envs.make`` accepts
``module:Class``): the admissible actions are ``ab`` and ``abc`` and the episode succeeds when the action sent at the
second step has an even number of characters. A random model therefore wins about half the time, which gives DAPO's
dynamic sampling groups with unequal returns to keep. (Free text would not do: an untrained model's responses have
no well-formed action, and collect sends every unparsable one as the same empty action.)
"""

from __future__ import annotations

from empg.envs import TextEnv

CHOICES = ("ab", "abc")


class ParityEnv(TextEnv):
    family = "generic"
    max_turns = 2

    def _reset(self, seed: int, options: dict) -> tuple[str, dict]:
        self._t = 0
        info = {"task": "say a word of even length", "task_type": "parity", "admissible_actions": list(CHOICES)}
        return f"Room {seed}. Say anything.", info

    def _step(self, action: str) -> tuple[str, float, bool, dict]:
        self._t += 1
        if self._t < 2:
            return (
                "Say it again.",
                0.0,
                False,
                {"task_type": "parity", "valid": True, "admissible_actions": list(CHOICES)},
            )
        won = len(action.strip()) % 2 == 0
        return "Done.", float(won), True, {"task_type": "parity", "valid": True, "won": won}

    def expert_action(self) -> str:
        return "ab"
