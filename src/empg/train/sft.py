"""Behaviour-cloning warm start: expert demos rendered with the rollout's ReAct prompts, masked next-token loss.

1. **Demos**: play ``sft.episodes`` train-split seeds (the first ones ``>= sft.seed_offset``, apart from the RL task
   pool) with ``env.expert_action()``. Every step becomes (prompt, response): the prompt is exactly what the rollout
   would show the policy at that step (:func:`empg.rollout.prompts.build_messages` with the same history window), the
   response a short templated thought plus the expert action (:func:`empg.rollout.prompts.expert_response`).
2. **Training**: ``sft.steps`` AdamW steps on shuffled mini-batches of ``sft.batch_size`` demo steps; the loss is the
   mean negative log-likelihood over response tokens only (prompt and padding masked out).
3. **DAgger** (``sft.dagger_rounds > 0``): roll out the cloned policy on fresh train seeds, label every state it
   visited with the expert's action (:func:`expert_labels`), train again on all demos so far. Behaviour cloning
   only ever sees the expert's states; DAgger adds the states the policy's own mistakes lead to.
4. **Evaluation** on ``eval.splits`` (``sft.eval_episodes`` each), written to ``run_dir/sft.json``.

Every ``sft.checkpoint_every`` steps (and after the last) the training state (weights, AdamW, the shuffling generator
and the batch order) goes to ``run_dir/checkpoints/sft/<phase>/`` (:func:`empg.train.checkpoint.save_checkpoint`), so
``empg train --resume`` after a kill during SFT continues SFT from there, bit for bit; demos and DAgger rollouts are
recomputed (deterministic). The directory is removed once ``base_model`` is saved (:func:`save_base_model`).

The preset's ``sft.steps`` is deliberately short: the policy should stop imperfect (20-50 % success on household) so
that RL has room to show what it adds.
"""

from __future__ import annotations

import functools
import json
import random
import shutil
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from empg.envs import make, split_seeds
from empg.eval.evaluate import eval_sampling_seed, evaluate_with_config, metric_key, render_report
from empg.policy import Policy
from empg.policy.sampling import SamplingParams
from empg.rollout import collect, prompts
from empg.rollout.collect import INVALID_ACTION
from empg.rollout.corpus import env_corpus
from empg.rollout.prompts import DEFAULT_PROMPT, PromptSpec
from empg.rollout.types import StepRecord
from empg.train import checkpoint as ckpt
from empg.train.batch import sft_batch
from empg.train.config import TrainConfig, to_dict, to_yaml
from empg.train.forward import response_logprobs
from empg.train.metrics import check_finite
from empg.train.optim import make_optimizer, model_dtype
from empg.train.progress import Progress, stamp
from empg.train.schedule import lr_factor
from empg.train.warmstart import export as export_warmstart


@dataclass
class Demo:
    """One expert step: chat prompt tokens and response tokens (the model's target)."""

    prompt_ids: list[int]
    response_ids: list[int]
    task_type: str
    seed: int


def collect_demos(
    policy: Policy,
    env_id: str,
    seeds: list[int],
    *,
    max_turns: int | None = None,
    prompt: PromptSpec = DEFAULT_PROMPT,
    split: str = "train",
    env_kwargs: dict | None = None,
    noise: float = 0.0,
    invalid_noise: float = 0.0,
    thoughts: str = "verb",
) -> list[Demo]:
    """Expert episodes on ``seeds`` rendered as (prompt, response) token pairs with the rollout's prompt code
    (``prompt``: :class:`empg.rollout.prompts.PromptSpec`, as the rollouts will show each step).

    With ``noise > 0`` each step executes, with that probability, a random admissible action other than the expert's
    (DART, Laskey et al. 2017): the perturbed step is shown in later prompts' history but is not a training target;
    the expert's steps from the perturbed states are, so the policy sees how to recover from off-course states such
    as the ones its own mistakes lead to. The draw is seeded by the episode seed. Envs that list no admissible
    actions give clean demos.

    With ``invalid_noise > 0`` a step that is not a detour executes, with that probability, an invalid action
    (:func:`invalid_variant`: the previous action repeated where it no longer applies, or the expert's action with
    another object number), again not trained on: the next prompt shows it and the env's rejection, and the
    expert's action from the unchanged state is the target. Without it demos never show a rejected action, and a
    cloned policy that makes one tends to repeat it until the turn limit.
    """
    demos: list[Demo] = []
    for seed in seeds:
        env = make(env_id, split, max_turns=max_turns, **(env_kwargs or {}))
        rng = random.Random(seed * 1_000_033 + 7)
        obs, info = env.reset(seed=seed)
        past: list[tuple[str, str]] = []
        done, step = False, 0
        while not done:
            action = env.expert_action()
            admissible = info["admissible_actions"]
            detours = [a for a in admissible or [] if a != action]
            executed = None  # an action other than the expert's: executed, not trained on
            if noise > 0 and detours and rng.random() < noise:
                executed = rng.choice(detours)
            elif invalid_noise > 0 and admissible and rng.random() < invalid_noise:
                executed = invalid_variant(action, past[-1][1] if past else None, admissible, rng)
            if executed is not None:
                action = executed
            else:
                messages = prompt.messages(env.family, info["task"], obs, past, step, admissible)  # as the rollout
                text = prompts.expert_response(env.family, action, thoughts)
                demos.append(
                    Demo(policy.chat_prompt_ids(messages), encode_response(policy, text), info["task_type"], seed)
                )
            past.append((obs, action))
            task = info["task"]
            obs, _, terminated, truncated, info = env.step(action)
            info = {**info, "task": info.get("task") or task}  # as the rollout does
            done = terminated or truncated
            step += 1
        env.close()
    return demos


def invalid_variant(action: str, previous: str | None, admissible: list[str], rng: random.Random) -> str | None:
    """An action that is not admissible now, shaped like a cloned policy's mistakes, or None when there is none:
    ``previous`` repeated (when it no longer applies), or ``action`` with one of its numbers changed to another of
    1-3 (``take apple 2 from countertop 1`` for ``take apple 1 from countertop 1``)."""
    import re

    allowed = set(admissible)
    candidates = [previous] if previous is not None and previous not in allowed else []
    numbers = list(re.finditer(r"\b\d+\b", action))
    if numbers:
        m = rng.choice(numbers)
        other = rng.choice([n for n in ("1", "2", "3") if n != m.group()])
        variant = action[: m.start()] + other + action[m.end() :]
        if variant not in allowed:
            candidates.append(variant)
    return rng.choice(candidates) if candidates else None


def expert_labels(
    policy: Policy,
    steps: list[StepRecord],
    env_id: str,
    *,
    max_turns: int | None = None,
    split: str = "train",
    env_kwargs: dict | None = None,
    thoughts: str = "verb",
) -> list[Demo]:
    """DAgger labels: every state a policy rollout visited, paired with the expert's action there.

    Each trajectory of ``steps`` (:class:`empg.rollout.types.StepRecord`, any order) is replayed in a fresh env with
    its seed: before each of the policy's steps the expert is asked what it would do, then the env receives exactly
    what the rollout sent it (the parsed action, or ``collect.INVALID_ACTION`` for an unparsable response). The
    prompt is the one the policy saw (``prompt_ids``), so the demo teaches the expert's answer in the policy's own
    state distribution.

    Raises:
        RuntimeError: when the replay disagrees with the record (``won``/``valid`` differ): the env is not
            deterministic given its seed and actions, so its labels would be for other states.
    """
    by_traj: dict[int, list[Any]] = {}
    for rec in steps:
        by_traj.setdefault(rec.traj_id, []).append(rec)
    demos: list[Demo] = []
    for traj in by_traj.values():
        traj.sort(key=lambda r: r.step_idx)
        env = make(env_id, split, max_turns=max_turns, **(env_kwargs or {}))
        env.reset(seed=traj[0].seed)
        for rec in traj:
            text = prompts.expert_response(env.family, env.expert_action(), thoughts)
            demos.append(Demo(list(rec.prompt_ids), encode_response(policy, text), rec.task_type, rec.seed))
            _, _, _, _, info = env.step(rec.action if rec.action is not None else INVALID_ACTION)
            if bool(info.get("won", False)) != rec.won or (rec.parsed and bool(info.get("valid", True)) != rec.valid):
                raise RuntimeError(
                    f"replay of {env_id} seed {rec.seed} diverged from the rollout at step {rec.step_idx}: the env "
                    "must be deterministic given its seed and actions for DAgger labels"
                )
        env.close()
    return demos


def encode_response(policy: Policy, text: str) -> list[int]:
    """Token ids of a response as the policy would generate it.

    Generation stops at the stop string ``</action>`` (``Policy.generate``), so a response ends with the action's
    closing tag and no end-of-turn token; the SFT target does the same.
    """
    return list(policy.tokenizer.encode(text, add_special_tokens=False))


def sft_train(
    policy: Policy,
    demos: list[Demo],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    schedule: str = "constant",
    warmup_steps: int = 0,
    seed: int = 0,
    group_by_length: bool = False,
    progress: Any = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
) -> list[float]:
    """Masked next-token loss on the response tokens; returns the loss of every step.

    Args:
        policy: an :class:`empg.policy.Policy` (trained in place).
        demos: from :func:`collect_demos`.
        steps, batch_size, lr, weight_decay: AdamW behaviour cloning settings.
        schedule, warmup_steps: learning rate ``lr * lr_factor(step)`` (:func:`lr_factor`).
        seed: seeds the mini-batch shuffling.
        group_by_length: batches of similar-length demos (:func:`length_grouped_order`) instead of uniform ones.
        progress: optional callable ``progress(step, loss)``.
        checkpoint_dir, checkpoint_every: save the training state under ``checkpoint_dir`` every ``checkpoint_every``
            steps and after the last (0: never); a call that finds there a checkpoint of the same demos and settings
            continues after its step (the result is the one of an uninterrupted call, bit for bit), one of other
            demos or settings is deleted.
    """
    if not demos:
        raise ValueError("no demonstrations to train on; raise sft.episodes")
    model = policy.model
    pad = policy.tokenizer.pad_token_id
    pad = pad if pad is not None else (policy.tokenizer.eos_token_id or 0)
    opt = make_optimizer(model, lr, weight_decay)  # fp32 master weights when the model is bf16
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, steps, schedule, warmup_steps))
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses: list[float] = []
    start, key = 0, ""
    if checkpoint_dir is not None and checkpoint_every > 0:
        key = _fingerprint(demos, steps, batch_size, lr, weight_decay, schedule, warmup_steps, seed, group_by_length)
        start, order, losses = _restore(Path(checkpoint_dir), key, model, opt, gen)
        sched.last_epoch = start  # the optimizer's param groups (restored) already hold that step's lr
    lengths = [len(d.prompt_ids) + len(d.response_ids) for d in demos]
    model.eval()  # dropout off, as in RL
    for step in range(start, steps):
        if len(order) < batch_size:
            perm = torch.randperm(len(demos), generator=gen).tolist()
            order.extend(length_grouped_order(perm, lengths, batch_size, gen) if group_by_length else perm)
        idx, order = order[:batch_size], order[batch_size:]
        batch = sft_batch([demos[i].prompt_ids for i in idx], [demos[i].response_ids for i in idx], pad)
        logp, _ = response_logprobs(model, batch, temperature=1.0)
        mask = batch.response_mask
        loss = -(torch.where(mask != 0, logp, torch.zeros_like(logp))).sum() / mask.sum().clamp_min(1)
        check_finite("SFT loss", loss, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if key and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            extra = {"key": key, "generator": ckpt._b64(gen.get_state()), "order": order, "losses": losses}
            ckpt.save_checkpoint(checkpoint_dir, step + 1, _Weights(model), opt, extra=extra, keep=1)
        if progress is not None:
            progress(step, losses[-1])
    return losses


class _Weights:
    """What an SFT checkpoint holds of the model: its parameters (``weights.safetensors``; no tokenizer, no config)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        path.mkdir(parents=True)
        save_file(
            {k: p.detach().cpu().contiguous() for k, p in self.model.named_parameters()},
            str(path / "weights.safetensors"),
        )


def _fingerprint(demos: list[Demo], *settings: Any) -> str:
    import hashlib

    h = hashlib.sha256(json.dumps(settings).encode())
    for d in demos:
        h.update(array("q", [*d.prompt_ids, -1, *d.response_ids, -2]).tobytes())
    return h.hexdigest()


def _restore(
    root: Path, key: str, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator
) -> tuple[int, list[int], list[float]]:
    """(steps done, batch order, losses) of the checkpoint under ``root`` (weights, AdamW, generator and global RNG
    restored); (0, [], []) when there is none or it is another SFT's (then deleted)."""
    from safetensors.torch import load_file

    last = ckpt.latest_checkpoint(root)
    extra = ckpt.load_state(last)["extra"] if last is not None else {}
    if extra.get("key") != key:
        shutil.rmtree(root, ignore_errors=True)
        return 0, [], []
    state = ckpt.restore_checkpoint(last, opt)
    weights = load_file(str(last / "weights.safetensors"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(weights[name])
    gen.set_state(ckpt._unb64(extra["generator"]))
    return state["iteration"], extra["order"], extra["losses"]


def length_grouped_order(
    perm: list[int], lengths: list[int], batch_size: int, gen: torch.Generator, window: int = 32
) -> list[int]:
    """``perm`` regrouped so that each consecutive ``batch_size`` chunk holds demos of similar length: every window of
    ``window * batch_size`` indices is sorted by length, cut into batches, and its batches are shuffled (as
    ``group_by_length`` in Hugging Face's Trainer). Each index still appears exactly once per pass."""
    out: list[int] = []
    span = window * batch_size
    for start in range(0, len(perm), span):
        chunk = sorted(perm[start : start + span], key=lambda i: lengths[i])
        batches = [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        for b in torch.randperm(len(batches), generator=gen).tolist():
            out.extend(batches[b])
    return out


def run_sft(policy: Policy, cfg: TrainConfig, run_dir: Path, *, console: Any = None) -> dict:
    """Demos → behaviour cloning → evaluation; writes ``run_dir/sft.json`` and returns its content."""
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seeds = split_seeds("train", cfg.sft.episodes, start=cfg.sft.seed_offset)
    demos = collect_demos(
        policy,
        cfg.env.id,
        seeds,
        max_turns=cfg.env.max_turns,
        prompt=PromptSpec.from_config(cfg.rollout),
        env_kwargs=cfg.env.kwargs,
        noise=cfg.sft.noise,
        invalid_noise=cfg.sft.invalid_noise,
        thoughts=cfg.rollout.thoughts,
    )
    t_demos = time.perf_counter() - t0
    torch.manual_seed(cfg.seed)
    stamp(console, f"SFT: {len(demos)} demonstration steps from {len(seeds)} expert episodes ({t_demos:.0f} s)")
    with _sft_progress(console, cfg.sft.steps, every=cfg.log.every) as progress:
        losses = _train(policy, demos, cfg, cfg.sft.steps, cfg.seed, progress, run_dir, "bc")
    t_train = time.perf_counter() - t0 - t_demos
    result: dict[str, Any] = {
        "demo_episodes": len(seeds),
        "demo_steps": len(demos),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "losses": losses,
        "time/demos": t_demos,
        "eval_seed": eval_sampling_seed(cfg.seed),
        "time/train": t_train,
    }
    if cfg.sft.dagger_rounds:
        result["dagger"] = _dagger(policy, cfg, demos, console, run_dir)
    if cfg.sft.eval_episodes > 0:
        t1 = time.perf_counter()
        for split in cfg.eval.splits:
            # seed = the RL loop's iteration-0 evaluation, which reuses this result
            report = evaluate_with_config(policy, cfg, split, cfg.sft.eval_episodes, seed=eval_sampling_seed(cfg.seed))
            result[f"{metric_key(split)}/success"] = report.success
            result[f"eval/{split}"] = report.to_dict()
            if console is not None:
                console.print(render_report(report, title=f"after SFT — {split}"))
        result["time/eval"] = time.perf_counter() - t1
    (run_dir / "sft.json").write_text(json.dumps(result, indent=2))
    return result


def _train(policy: Any, demos: list[Demo], cfg: TrainConfig, steps: int, seed: int, progress: Any, run_dir: Path,
           phase: str) -> list[float]:  # fmt: skip
    """:func:`sft_train` with the config's optimizer and checkpoint settings (``checkpoints/sft/<phase>``)."""
    s = cfg.sft
    return sft_train(policy, demos, steps=steps, batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay,
                     schedule=s.schedule, warmup_steps=s.warmup_steps, seed=seed, group_by_length=s.group_by_length,
                     progress=progress, checkpoint_dir=sft_checkpoints(run_dir) / phase,
                     checkpoint_every=s.checkpoint_every)  # fmt: skip


def sft_checkpoints(run_dir: str | Path) -> Path:
    """Where SFT's checkpoints go (one directory per training phase: ``bc``, ``dagger_1``, ...)."""
    return Path(run_dir) / "checkpoints" / "sft"


def save_base_model(policy: Policy, run_dir: str | Path) -> Path:
    """Save ``run_dir/base_model`` atomically, then delete SFT's checkpoints (and ``checkpoints/`` if left empty)."""
    out = policy.save_atomic(Path(run_dir) / "base_model")
    shutil.rmtree(sft_checkpoints(run_dir), ignore_errors=True)
    try:
        sft_checkpoints(run_dir).parent.rmdir()
    except OSError:  # not empty (RL checkpoints), or absent
        pass
    return out


def _dagger(policy: Policy, cfg: TrainConfig, demos: list[Demo], console: Any, run_dir: Path) -> list[dict]:
    """``sft.dagger_rounds`` rounds of: roll out the policy on fresh train seeds (rollout temperature), label the
    visited states with the expert (:func:`expert_labels`), train on all demos so far. Returns one dict per round
    (its rollout success is the policy's before that round's training)."""
    n, per = cfg.sft.episodes, cfg.sft.dagger_episodes
    all_seeds = split_seeds("train", n + cfg.sft.dagger_rounds * per, start=cfg.sft.seed_offset)
    rounds = []
    for r in range(cfg.sft.dagger_rounds):
        if console is not None:
            console.print(f"DAgger round {r + 1}/{cfg.sft.dagger_rounds}: rolling out {per} policy episodes ...")
        t0 = time.perf_counter()
        rollout = collect(
            policy,
            cfg.env.id,
            all_seeds[n + r * per : n + (r + 1) * per],
            group_size=1,
            sampling=SamplingParams(
                temperature=cfg.rollout.temperature,
                max_new_tokens=cfg.rollout.max_new_tokens,
                jump_forward=cfg.rollout.jump_forward,
            ),
            max_turns=cfg.env.max_turns,
            prompt=PromptSpec.from_config(cfg.rollout),
            record_behaviour=False,
            generator=torch.Generator().manual_seed(cfg.seed * 7919 + r),
            env_kwargs=cfg.env.kwargs,
            constrain_actions=cfg.rollout.constrain_actions,
            constrain_scope=cfg.rollout.constrain_scope,
            thoughts=cfg.rollout.thoughts,
        )
        labelled = expert_labels(
            policy,
            rollout.steps,
            cfg.env.id,
            max_turns=cfg.env.max_turns,
            env_kwargs=cfg.env.kwargs,
            thoughts=cfg.rollout.thoughts,
        )
        demos.extend(labelled)
        t_rollout = time.perf_counter() - t0
        label = f"DAgger {r + 1}/{cfg.sft.dagger_rounds}"
        with _sft_progress(console, cfg.sft.dagger_steps, label, every=cfg.log.every) as progress:
            losses = _train(
                policy, demos, cfg, cfg.sft.dagger_steps, cfg.seed + 1 + r, progress, run_dir, f"dagger_{r + 1}"
            )
        info = {
            "rollout_success": rollout.success_rate,
            "labelled_steps": len(labelled),
            "demo_steps": len(demos),
            "loss_last": losses[-1] if losses else None,
            "time/rollout": t_rollout,
            "time/train": time.perf_counter() - t0 - t_rollout,
        }
        if console is not None:
            console.print(
                f"DAgger round {r + 1}: policy success {info['rollout_success']:.1%} on {per} train episodes, "
                f"+{len(labelled)} labelled steps, loss {info['loss_last']:.3f}"
            )
        rounds.append(info)
    return rounds


class _sft_progress:  # noqa: N801 - used like a function
    """Progress of the SFT steps (:class:`empg.train.progress.Progress`; no-op without a console); yields
    ``progress(step, loss)``."""

    def __init__(self, console: Any, total: int, label: str = "SFT", every: float = 30.0):
        self.console, self.total, self.label, self.every, self._p = console, total, label, every, None

    def __enter__(self):
        if self.console is None:
            return None

        self._p = Progress(self.console, self.label, self.total, every=self.every).__enter__()
        return lambda step, loss: self._p.update(step + 1, f"loss {loss:.3f}")

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)


def run_sft_command(cfg: TrainConfig, *, console: Any = None, export: Path | None = None, command: str = "") -> dict:
    """`empg sft`: build the model from ``model.spec`` (``model.init`` is ignored), behaviour-clone it, evaluate, save
    ``run_dir/base_model`` (RL starts from it); with ``export``, also write it there as a warm start with a manifest
    (:mod:`empg.train.warmstart`) whose ``rebuild`` entry is ``command``."""
    from dataclasses import replace

    cfg = replace(cfg, model=replace(cfg.model, init=None))
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    policy = build_base_policy(cfg, console=console)
    save_base_model(policy, run_dir)
    result = json.loads((run_dir / "sft.json").read_text())
    if export is not None:
        out = export_warmstart(
            run_dir / "base_model", export, name=Path(export).name, rebuild=command, config=to_dict(cfg), sft=result
        )
        if console is not None:
            console.print(f"warm start written to {out} (manifest.json lists the sha256 of every file)")
    return result


def build_base_policy(cfg: TrainConfig, *, console: Any = None) -> Policy:
    """Build the model from ``model.spec`` and, when ``sft.enabled``, warm-start it by behaviour cloning."""
    policy = Policy.from_spec(
        cfg.model.spec,
        cache_dir=cfg.model.cache_dir,
        device=cfg.model.device,
        dtype=model_dtype(cfg.model.dtype),
        seed=cfg.seed,
        corpus=functools.partial(env_corpus, thoughts=cfg.rollout.thoughts),
    )
    if cfg.sft.enabled:
        run_sft(policy, cfg, Path(cfg.run_dir), console=console)
    return policy
