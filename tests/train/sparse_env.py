"""A two-step test env that lists two admissible actions at its first step and none at its second.

Used as ``env.id=sparse_env:SparseEnv`` by the constrained-decoding tests: the first step must be decoded as one of
its admissible actions, the second (empty list) falls back to free text and is counted. Success: the first action
was ``left``.
"""

from __future__ import annotations

from empg.envs import TextEnv

CHOICES = ["left", "right"]


class SparseEnv(TextEnv):
    family = "generic"
    max_turns = 2

    def _reset(self, seed: int, options: dict) -> tuple[str, dict]:
        self._t, self._first = 0, None
        return f"Room {seed}. Go left or right.", {
            "task": "go left",
            "task_type": "sparse",
            "admissible_actions": CHOICES,
        }

    def _step(self, action: str) -> tuple[str, float, bool, dict]:
        self._t += 1
        if self._t == 1:
            self._first = action
            return (
                "Say anything.",
                0.0,
                False,
                {"task_type": "sparse", "valid": action in CHOICES, "admissible_actions": []},
            )
        won = self._first == "left"
        return "Done.", float(won), True, {"task_type": "sparse", "valid": True, "won": won, "admissible_actions": []}

    def expert_action(self) -> str:
        return "left" if self._t == 0 else "ok"
