"""``empg prop1 RUN_DIR``: the paper's Proposition 1, measured on a run's own policy (METHOD.md §4).

For a softmax π = softmax(z) over (temperature-scaled) logits z, the score function of token a is
∇_z log π(a) = e_a − π, so its squared norm is ‖e_a − π‖² = 1 − 2 π_a + Σ_b π_b², and its expectation under
a ~ π is E‖∇_z log π(a)‖² = Σ_a π_a ‖e_a − π‖² = 1 − Σ_a π_a² = 1 − exp(−H₂(π)), with H₂ = −log Σ π² the Rényi-2
entropy: confident distributions give small policy gradients, uncertain ones large gradients.

The diagnostic loads the run's latest policy (latest checkpoint, else ``base_model``; as ``empg eval``), rolls out
``--episodes`` episodes of ``--split`` at the run's rollout temperature (the first seeds of the split, one episode
each), recomputes the logits of every response token and computes per token

* (a) ``expected`` = 1 − Σ π² (the exact expectation above, from the probabilities),
* (b) ``realised`` = 1 − 2 π_{a_t} + Σ π² for the token a_t the policy actually sampled,
* (c) ``renyi2`` = H₂ = −log Σ π² (as :func:`empg.algos.entropy.token_renyi2`),

with z = logits / ``rollout.temperature`` (the behaviour policy; at temperature 1 these are the raw logits; the
gradient w.r.t. the raw logits is this one divided by the temperature). Per step (one response) it averages each
over the step's response tokens. It reports the Pearson and Spearman correlations per token (realised vs expected)
and per step (step-mean realised vs step-mean expected, and vs step-mean H₂), plus mean realised vs mean expected,
which agree in expectation when tokens are sampled from π (``rollout.top_p`` = 1). Under constrained decoding
(``rollout.constrain_actions``) π is the softmax restricted to each position's allowed tokens, the distribution that
was sampled from and that the trainer updates (:func:`restrict_to_allowed`; a forced token has π = 1 and norm 0).

Outputs in ``--out`` (default ``RUN_DIR/prop1``): ``prop1.json`` (summary, per-step rows, per-token values) and
``prop1.png`` (realised norm vs H₂ per token and per step, with the curve 1 − exp(−H₂)).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from empg.eval.evaluate import eval_seeds
from empg.eval.plots import _save
from empg.policy import Policy
from empg.rollout import collect
from empg.train.backends import rollout_settings
from empg.train.batch import StepBatch
from empg.train.checkpoint import resolve_model_dir
from empg.train.config import load_run_config
from empg.train.forward import forward_logits


# ============================================================================= the quantities
def score_norms(logits: Any, tokens: Any, *, temperature: float = 1.0, chunk_size: int = 256) -> dict[str, Any]:
    """Squared score-function norms w.r.t. the logits, per row, in the logits' float precision (≥ float32).

    Args:
        logits: (N, V) raw logits of N token positions.
        tokens: (N,) long, the token sampled at each position.
        temperature: divides the logits (z = logits / temperature).
        chunk_size: rows processed at once (memory: a few (chunk_size, V) buffers).

    Returns:
        ``expected`` (N,) = 1 − Σπ², ``realised`` (N,) = 1 − 2π_a + Σπ², ``renyi2`` (N,) = −log Σπ²,
        ``p_token`` (N,) = π_a; tensors of dtype float64 if the logits are float64, else float32.
    """
    import torch

    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    parts: dict[str, list] = {"expected": [], "realised": [], "renyi2": [], "p_token": []}
    for z, a in zip(logits.split(chunk_size), tokens.split(chunk_size), strict=True):
        logp = torch.log_softmax(z.to(dtype) / temperature, dim=-1)  # (c, V)
        log_sum_p2 = torch.logsumexp(2.0 * logp, dim=-1)  # (c,) log Σπ², stable for peaked π
        sum_p2 = log_sum_p2.exp()
        p_a = logp.gather(-1, a.view(-1, 1)).squeeze(-1).exp()  # (c,)
        parts["expected"].append(1.0 - sum_p2)
        parts["realised"].append(1.0 - 2.0 * p_a + sum_p2)
        parts["renyi2"].append(-log_sum_p2)
        parts["p_token"].append(p_a)
    empty = torch.zeros(0, dtype=dtype)
    return {k: torch.cat(v) if v else empty for k, v in parts.items()}


def restrict_to_allowed(logits: Any, allowed: Any) -> Any:
    """``logits`` (N, V) with every token outside its position's allowed set set to -inf, so that the softmax is the
    constrained-decoding distribution (:mod:`empg.policy.constrain`) and the score function is that of the policy
    the trainer updates (forced positions: π = 1, score norm 0). ``allowed`` (N, K): the allowed ids, -1 padded;
    an all -1 row is unconstrained and keeps the full softmax."""
    import torch

    valid = allowed >= 0  # (N, K)
    hits = torch.zeros(logits.shape, dtype=torch.long, device=logits.device)
    hits.scatter_add_(-1, allowed.clamp_min(0), valid.long())  # padding adds 0 at id 0
    keep = (hits > 0) | ~valid.any(-1, keepdim=True)
    return logits.masked_fill(~keep, float("-inf"))


@dataclass
class StepValues:
    """Per-token values of one rollout batch, with the step (row) each token belongs to.

    Attributes:
        row: (N,) index of the step of each token (0 … S−1).
        expected, realised, renyi2: (N,) as in :func:`score_norms`.
        steps: S dicts ``traj_id, step_idx, n_tokens, success`` (row order).
    """

    row: np.ndarray
    expected: np.ndarray
    realised: np.ndarray
    renyi2: np.ndarray
    steps: list[dict]


def step_means(values: StepValues) -> dict[str, np.ndarray]:
    """Mean of each per-token quantity over the step's response tokens: (S,) arrays."""
    n = len(values.steps)
    count = np.bincount(values.row, minlength=n).astype(np.float64)
    out = {}
    for key in ("expected", "realised", "renyi2"):
        sums = np.bincount(values.row, weights=getattr(values, key), minlength=n)
        out[key] = sums / np.maximum(count, 1)
    return out


def correlations(x: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """Pearson and Spearman correlation (None when fewer than 3 points or a constant input)."""
    from scipy.stats import pearsonr, spearmanr

    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson": None, "spearman": None}
    return {"pearson": float(pearsonr(x, y)[0]), "spearman": float(spearmanr(x, y)[0])}


# ============================================================================= scoring a rollout
def score_steps(policy: Any, steps: list, won: dict[int, bool], temperature: float, micro_batch: int) -> StepValues:
    """Recompute the logits of every response token of ``steps`` and the Proposition 1 quantities.

    Args:
        policy: an :class:`empg.policy.Policy`.
        steps: StepRecords of one rollout.
        won: trajectory id → success.
        temperature: the behaviour temperature.
        micro_batch: step rows per forward pass.
    """
    import torch

    pad = policy.tokenizer.pad_token_id if policy.tokenizer.pad_token_id is not None else 0
    batch = StepBatch.from_records(steps, int(pad))
    start, width = batch.response_start, batch.input_ids.shape[1]
    device = policy.device
    rows, parts = [], {"expected": [], "realised": [], "renyi2": []}
    with torch.no_grad():
        for idx in torch.split(torch.arange(len(steps)), micro_batch):
            ids, att = batch.input_ids[idx].to(device), batch.attention_mask[idx].to(device)
            pos = (att.cumsum(-1) - 1).clamp_min(0)
            logits = forward_logits(policy.model, ids, att, pos, keep=width - start + 1)[:, :-1]  # (b, R, V)
            mask = batch.response_mask[idx, start:] != 0  # (b, R) on the CPU
            on_dev = mask.to(device)
            z = logits[on_dev].float()
            if batch.allowed is not None:  # constrained decoding: the behaviour policy is the restricted softmax
                z = restrict_to_allowed(z, batch.allowed[idx, start:].to(device)[on_dev])
            vals = score_norms(z, ids[:, start:][on_dev], temperature=temperature)
            for key in parts:
                parts[key].append(vals[key].double().cpu().numpy())
            rows.append(idx.view(-1, 1).expand_as(mask)[mask].numpy())
    meta = [
        {"traj_id": s.traj_id, "step_idx": s.step_idx, "n_tokens": len(s.response_ids), "success": won[s.traj_id]}
        for s in steps
    ]
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return StepValues(np.concatenate(rows), cat["expected"], cat["realised"], cat["renyi2"], meta)


def summarise(values: StepValues) -> dict[str, Any]:
    """Correlations and means per token and per step (the JSON's ``token`` and ``step`` sections)."""
    means = step_means(values)
    token = {
        "n": int(values.realised.size),
        "mean_realised": float(values.realised.mean()),
        "mean_expected": float(values.expected.mean()),
        "realised_vs_expected": correlations(values.realised, values.expected),
        "realised_vs_renyi2": correlations(values.realised, values.renyi2),
    }
    step = {
        "n": len(values.steps),
        "realised_vs_expected": correlations(means["realised"], means["expected"]),
        "realised_vs_renyi2": correlations(means["realised"], means["renyi2"]),
    }
    return {"token": token, "step": step}


# ============================================================================= entry point
def run_prop1(
    run_dir: str | Path,
    *,
    episodes: int = 8,
    out: str | Path | None = None,
    split: str = "train",
    checkpoint: str | Path | None = None,
    seed: int | None = None,
) -> tuple[dict, list[Path]]:
    """``empg prop1``: roll out the run's policy, score its steps, write ``prop1.json`` and ``prop1.png``.

    Returns:
        (the JSON content, [json path, png path]).

    Raises:
        FileNotFoundError: no saved model in the run; ValueError: ``episodes < 1`` or no step was collected.
    """
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    cfg = load_run_config(run_dir)
    model_dir = resolve_model_dir(run_dir, checkpoint)
    _quiet_transformers()
    policy = Policy.load(model_dir, device=cfg.model.device)
    seed = cfg.seed if seed is None else seed
    steps, won = rollout_steps(policy, cfg, split, episodes, seed)
    micro = max(1, min(cfg.optim.micro_batch_size, 4))  # full-vocabulary logits of 4 rows at a time
    values = score_steps(policy, steps, won, cfg.rollout.temperature, micro)
    data = {
        "run_dir": str(run_dir),
        "model": str(model_dir),
        "split": split,
        "episodes": episodes,
        "seed": seed,
        "temperature": cfg.rollout.temperature,
        "top_p": cfg.rollout.top_p,
        **summarise(values),
        "steps": _step_rows(values),
        "tokens": {k: np.round(getattr(values, k), 7).tolist() for k in ("expected", "realised", "renyi2")},
    }
    data["tokens"]["step"] = values.row.tolist()
    out_dir = Path(out) if out is not None else Path(run_dir) / "prop1"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "prop1.json"
    path.write_text(json.dumps(data))
    return data, [path, plot_prop1(values, out_dir / "prop1.png")]


def rollout_steps(policy: Any, cfg: Any, split: str, episodes: int, seed: int) -> tuple[list, dict[int, bool]]:
    """One episode on each of the first ``episodes`` seeds of ``split`` at the run's rollout settings.

    Returns:
        (step records with at least one response token, trajectory id → success).
    """
    import torch

    torch.manual_seed(seed)
    result = collect(
        policy,
        cfg.env.id,
        eval_seeds(split, episodes),  # the seeds an evaluation of this split plays
        group_size=1,
        split=split,
        env_kwargs=cfg.env.kwargs,
        **rollout_settings(cfg, torch.Generator().manual_seed(seed)),
    )
    steps = [s for s in result.steps if s.response_ids]
    if not steps:
        raise ValueError("the rollout produced no response tokens; use more --episodes")
    return steps, {t.traj_id: t.success for t in result.trajectories}


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar per model load


def _step_rows(values: StepValues) -> list[dict]:
    means = step_means(values)
    rows = []
    for i, meta in enumerate(values.steps):
        rows.append({**meta, **{k: round(float(means[k][i]), 7) for k in ("expected", "realised", "renyi2")}})
    return rows


def plot_prop1(values: StepValues, out: Path) -> Path:
    """Realised ‖∇_z log π(a_t)‖² vs H₂ per token and per step (mean), with the expectation curve 1 − exp(−H₂)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = step_means(values)
    success = np.array([s["success"] for s in values.steps], dtype=bool)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    hi = max(float(values.renyi2.max()), 1e-3) * 1.05
    grid = np.linspace(0.0, hi, 200)
    axes[0].scatter(values.renyi2, values.realised, s=4, alpha=0.3, label="tokens")
    for outcome, mask, color in (("success", success, "tab:green"), ("failure", ~success, "tab:red")):
        if mask.any():
            axes[1].scatter(means["renyi2"][mask], means["realised"][mask], s=12, color=color, label=f"{outcome} steps")
    for ax, title in zip(axes, ("per token", "per step (mean over the step's tokens)"), strict=True):
        ax.plot(grid, 1.0 - np.exp(-grid), color="black", lw=1.2, label="E = 1 − exp(−H₂)")
        ax.set_xlabel("Rényi-2 entropy H₂ (nats)")
        ax.set_ylabel("‖∇_z log π(a)‖²")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out)


def render_summary(data: dict) -> Any:
    """A rich Table of the correlations and means."""
    from rich.table import Table

    def fmt(v: float | None) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    table = Table(title=f"Proposition 1 on {data['model']} ({data['token']['n']} tokens, {data['step']['n']} steps)")
    for col in ("level", "pair", "pearson", "spearman"):
        table.add_column(col)
    for level in ("token", "step"):
        for pair in ("realised_vs_expected", "realised_vs_renyi2"):
            corr = data[level][pair]
            table.add_row(level, pair.replace("_", " "), fmt(corr["pearson"]), fmt(corr["spearman"]))
    tok = data["token"]
    table.caption = f"mean realised {tok['mean_realised']:.4f} vs mean expected {tok['mean_expected']:.4f}"
    return table
