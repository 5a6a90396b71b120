"""Power of a paired method comparison, from a pilot: how many training seeds and evaluation episodes resolve a
difference of ``--delta`` (default 5 pp) at ``--power`` (default 80 %), two-sided alpha 0.05.

    python experiments/power.py                       # pilot: the quick start with vs without EMPG, seeds 0-2
    python experiments/power.py --pairs RUN_A:RUN_B ... --split eval_out --delta 0.05

Model of one seed's observed difference (method B - method A, both runs evaluated on the same episode seeds with the
same sampling seed, so the evaluation is paired): ``d_s = delta + u_s + e_s``. ``e_s`` is the evaluation noise, with
variance ``v / m`` for ``m`` paired episodes, ``v`` the per-episode variance of ``b - a`` (measured in the pilot);
``u_s`` is what the training run itself adds (its seed and optimisation path), variance ``sigma_run^2``, estimated as
``var(d_s) - mean(v / m)`` over the pilot seeds (at least 0). With ``n`` seeds the paired t statistic of the mean
difference is noncentral t with ``n - 1`` degrees of freedom and noncentrality
``delta / sqrt((sigma_run^2 + v / m) / n)``; the script finds the smallest ``n`` whose power reaches the target.

A pilot of 3 seeds pins ``sigma_run`` only loosely, so the table also gives the seeds needed when ``sigma_run`` is
``--pessimistic-run-sd`` (default: the spread of one seed's end point over the mini-batch probe, mb1/gigpo/mb4/mb8,
times sqrt(2) for a difference of two runs). Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats

from empg.eval.evaluate import EvalReport

RESULTS = Path(__file__).resolve().parent / "results" / "household-quickstart-rl"
PILOT = [f"gigpo-noempg-s{k}:gigpo-s{k}" for k in range(3)]
MINI_BATCH_PROBE = ["mb1-s0", "gigpo-s0", "mb4-s0", "mb8-s0"]


def last_eval(run: Path, split: str, iteration: int | None) -> EvalReport:
    """The evaluation of ``split`` at ``iteration`` (default: the last one with per-seed outcomes) of a run folder."""
    files = sorted((run / "eval").glob(f"{split}_iter_*.json"))
    if iteration is not None:
        files = [f for f in files if int(f.stem.rsplit("_", 1)[1]) == iteration]
    reports = [EvalReport.from_dict(json.loads(f.read_text())) for f in files]
    reports = [r for r in reports if r.outcomes]
    if not reports:
        raise SystemExit(f"{run}: no {split} evaluation with per-seed outcomes (iteration {iteration})")
    return reports[-1]


def _iterations(run: Path, split: str) -> list[int]:
    return [int(f.stem.rsplit("_", 1)[1]) for f in (run / "eval").glob(f"{split}_iter_*.json")]


def pilot(pairs: list[str], split: str, iteration: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Per pair: the mean paired difference d_s and the per-episode variance v_s of b - a; and the episodes m."""
    d, v, m = [], [], []
    for pair in pairs:
        a_name, b_name = pair.split(":")
        run_a, run_b = (RESULTS / n if "/" not in n else Path(n) for n in (a_name, b_name))
        at = (
            iteration if iteration is not None else max(set(_iterations(run_a, split)) & set(_iterations(run_b, split)))
        )
        a, b = last_eval(run_a, split, at).outcomes, last_eval(run_b, split, at).outcomes
        seeds = sorted(set(a) & set(b))
        diff = np.array([float(b[s]) - float(a[s]) for s in seeds])
        d.append(diff.mean())
        v.append(diff.var(ddof=1))
        m.append(len(seeds))
    return np.array(d), np.array(v), min(m)


def power(n: int, delta: float, sd: float, alpha: float = 0.05) -> float:
    """Power of a two-sided one-sample t test of n differences with true mean ``delta`` and s.d. ``sd``."""
    if n < 2:
        return 0.0
    df, ncp = n - 1, delta / (sd / math.sqrt(n))
    crit = stats.t.ppf(1 - alpha / 2, df)
    p = float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))
    if math.isnan(p):  # scipy's noncentral t fails far in the tail: the usual normal approximation there
        p = float(stats.norm.sf((crit - ncp) / math.sqrt(1 + crit**2 / (2 * df))))
    return p


def seeds_needed(delta: float, sd: float, target: float, cap: int = 200) -> int | None:
    return next((n for n in range(2, cap + 1) if power(n, delta, sd) >= target), None)


def end_point_sd(runs: list[str], split: str) -> float:
    """S.d. of the success rate at the end of several runs from one seed (the optimisation-path spread)."""
    at = max(set.intersection(*(set(_iterations(RESULTS / r, split)) for r in runs)))  # the same iteration for all
    rates = [last_eval(RESULTS / r, split, at).table["all"].rate for r in runs]
    return float(np.std(rates, ddof=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", nargs="+", default=PILOT, help="A:B run folders (names under results/... or paths)")
    ap.add_argument("--split", default="eval_in", help="evaluation split")
    ap.add_argument(
        "--iteration", type=int, default=None, help="evaluation iteration (default: the last both runs of a pair have)"
    )
    ap.add_argument("--delta", type=float, default=0.05, help="difference to resolve (success rate, 0.05 = 5 pp)")
    ap.add_argument("--power", type=float, default=0.8, help="target power")
    ap.add_argument("--episodes", default="256,512,1024,2048", help="paired evaluation episodes per split to tabulate")
    ap.add_argument("--pessimistic-run-sd", type=float, default=None, help="sigma_run for the pessimistic column")
    args = ap.parse_args()

    d, v, m = pilot(args.pairs, args.split, args.iteration)
    eval_var = float(np.mean(v / m))
    run_var = max(0.0, float(np.var(d, ddof=1)) - eval_var)
    pess = args.pessimistic_run_sd
    if pess is None:
        pess = end_point_sd(MINI_BATCH_PROBE, args.split) * math.sqrt(2)
    print(f"pilot ({args.split}, {len(d)} seeds, {m} paired episodes each): d = " + ", ".join(f"{x:+.1%}" for x in d))
    print(
        f"  s.d. of d over seeds {np.std(d, ddof=1):.1%}; "
        f"evaluation noise s.d. at {m} episodes {math.sqrt(eval_var):.1%}"
    )
    print(f"  -> sigma_run = {math.sqrt(run_var):.1%} (pilot); pessimistic sigma_run = {pess:.1%}")
    print(f"\nseeds for {args.delta:.0%} at {args.power:.0%} power (two-sided alpha 0.05, paired t over seeds)\n")
    print(
        "| paired episodes per split | s.d. of d (pilot) | seeds (pilot sigma_run) | s.d. of d (pessimistic) | seeds |"
    )
    print("| --- | --- | --- | --- | --- |")
    per_episode = float(np.mean(v))
    for episodes in (int(e) for e in args.episodes.split(",")):
        sd_p = math.sqrt(run_var + per_episode / episodes)
        sd_q = math.sqrt(pess**2 + per_episode / episodes)
        n_p, n_q = seeds_needed(args.delta, sd_p, args.power), seeds_needed(args.delta, sd_q, args.power)
        print(f"| {episodes} | {sd_p:.1%} | {n_p or '> 200'} | {sd_q:.1%} | {n_q or '> 200'} |")


if __name__ == "__main__":
    main()
