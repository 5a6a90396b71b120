"""Prototype for experiments/results/household-object-choice (see its README): run the empg CLI with other
templated thoughts for household actions (SFT demos, constrained responses and tokenizer corpus alike).

    python thoughts.py object|take empg-cli-arguments...

``object``: every thought starts with the action's object or receptacle ("pot 1 is here; I will take it.", "cabinet 1
may have it; I will go there."), so a response's first choice is a name, which the model can copy from the task.
``take``: only the take thought does ("pot 1 is here; I will take it."); every other one is the shipped template.
This is now the option ``rollout.thoughts=take_first`` (prefer it); the variant remains so that the runs recorded
here can be re-run as they were.
"""

import sys

from empg.rollout import prompts

OBJECT_FIRST = [
    (r"go to (.+)", "{0} may have it; I will go there."),
    (r"open (.+)", "{0} is closed; I will open it."),
    (r"close (.+)", "{0} is done; I will close it."),
    (r"take (.+) from (.+)", "{0} is here; I will take it."),
    (r"put (.+) in/on (.+)", "{0} goes in/on {1}."),
    (r"put (.+) (?:in|on) (.+)", "{0} goes in/on {1}."),
    (r"clean (.+) with (.+)", "{0} must be clean; I will clean it with {1}."),
    (r"heat (.+) with (.+)", "{0} must be hot; I will heat it with {1}."),
    (r"cool (.+) with (.+)", "{0} must be cool; I will cool it with {1}."),
    (r"use (.+)", "{0} gives light; I will turn it on."),
    (r"examine (.+)", "{0} is what I will examine."),
    (r"look", "I will look around."),
    (r"inventory", "I will check what I carry."),
]


def patch(variant: str) -> None:
    """Replace the household templates in place (``prompts.THOUGHTS["household"]`` is the same list)."""
    if variant == "object":
        prompts._HOUSEHOLD[:] = OBJECT_FIRST
    elif variant == "take":  # what became rollout.thoughts=take_first: its templates, not a second copy
        prompts._HOUSEHOLD[:] = prompts.thought_templates("household", "take_first")
    else:
        raise SystemExit(f"variant must be object or take, got {variant!r}")


if __name__ == "__main__":
    patch(sys.argv[1])
    from empg.cli import main

    sys.exit(main(sys.argv[2:]))
