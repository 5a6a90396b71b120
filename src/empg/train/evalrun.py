"""``empg eval RUN_DIR``: a run's model evaluated with the run's own settings (env, turn limit, prompt, temperature,
episode count and sampling seed), saved next to the run's evaluations without overwriting them."""

from __future__ import annotations

from pathlib import Path

import torch

from empg.eval.evaluate import EvalReport, eval_sampling_seed, evaluate_with_config, save_report
from empg.policy import Policy
from empg.train.checkpoint import resolve_model_dir
from empg.train.config import load_run_config


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "eval_in",
    episodes: int | None = None,
    checkpoint: str | Path | None = None,
    greedy: bool = False,
    temperature: float | None = None,
    sampling_seed: int | None = None,
) -> tuple[EvalReport, Path]:
    """`empg eval RUN_DIR`: evaluate a run's latest (or given) model with the run's settings; save JSON.

    With the default ``sampling_seed`` (the run's, :func:`eval_sampling_seed`) and the run's episode count, the
    result equals the training loop's own evaluation of that model seed for seed, so it pairs with the run's
    ``eval/<split>_iter_XXXX.json``; another ``sampling_seed`` pairs a model with another run's evaluations.

    ``temperature`` samples at that temperature instead of the run's ``eval.temperature`` (``greedy`` excludes it).

    Returns:
        The report and its path,
        ``run_dir/eval/cli/<split>_<model>_n<episodes>_s<sampling seed>[_greedy | _t<temperature>].json`` (its own
        folder: never overwrites the training loop's evaluations; ``_t`` only when the temperature is not the run's).
    """
    if temperature is not None and (greedy or not 0.0 < temperature <= 10.0):
        raise ValueError(
            f"temperature={temperature}: give a value in (0, 10], and not together with greedy (greedy is T -> 0)"
        )
    cfg = load_run_config(run_dir)
    tag = "_greedy" if greedy else ""
    if temperature is not None and temperature != cfg.eval.temperature:
        cfg.eval.temperature, tag = temperature, f"_t{temperature:g}"
    model_dir = resolve_model_dir(run_dir, checkpoint)
    policy = Policy.load(model_dir, dtype=getattr(torch, cfg.model.dtype))
    seed = eval_sampling_seed(cfg.seed) if sampling_seed is None else sampling_seed
    episodes = episodes or cfg.eval.episodes
    report = evaluate_with_config(policy, cfg, split, episodes, seed=seed, greedy=greedy)
    name = f"{split}_{model_dir.name}_n{episodes}_s{seed}{tag}.json"
    path = save_report(report, Path(run_dir) / "eval" / "cli" / name)
    return report, path
