"""Seconds per RL iteration: our trainer (`empg train`) vs TRL's GRPOTrainer on the same work; ratio TRL / empg.

Same tiny Qwen2 (tiny-1m, one HF directory both load), household-v0 small scenes, the same task seeds (the first
--n-tasks train seeds, every iteration), group size, turn limit, max new tokens per turn, sampling at temperature 1
(full softmax, stop after </action> or EOS), free-text actions, GRPO (group-std advantages, clip 0.2, token-mean loss,
no KL, no reference model), AdamW at the same lr (constant, no warm-up, weight decay 0, grad clip 1.0), ONE optimizer
step per iteration, fp32, CPU, no vLLM. Each side runs 1 warm-up iteration, then the mean of --iterations is reported.

Structural difference (what each trainer does with an episode): empg trains one row per env step, whose prompt holds
the task, the last 2 (observation, action) pairs and the current observation, so a row stays short however long the
episode; TRL trains one row per episode, the concatenated prompt + response + observation + response ... (observation
tokens masked out of the loss through rollout_func's env_mask), so its rows grow with the number of turns and every
turn's generation re-reads the whole episode so far. The TRL episode's turns are rendered as chat turns: the first
user message is empg's step-0 prompt, each later one the observation and the admissible actions.
Batching: empg accumulates the gradient over micro-batches of 16 step rows (optim.micro_batch_size), TRL runs
all n_tasks x group_size episodes in one forward/backward (per_device_train_batch_size, no accumulation).

TRL side: rollout_func(prompts, trainer) -> {"prompt_ids", "completion_ids", "logprobs", "env_mask", extra fields
forwarded to the reward functions} (trl 1.16.0, trl/trainer/grpo_trainer.py, GRPOTrainer._generate); it plays the
env with trainer.model.generate. It needs TRL in a separate venv (torch and transformers shared with ours):

    bash scripts/trl-bench-env.sh                            # builds /work/venv-trl once
    /work/venv-trl/bin/python benchmarks/bench_trl.py        # 4 tasks x 4, 8 turns, 48 new tokens, 3 iterations
    /work/venv-trl/bin/python benchmarks/bench_trl.py --quick   # smoke test: 2 tasks x 2, 2 turns, 1 iteration
    /work/venv-trl/bin/python benchmarks/bench_trl.py --n-tasks 8 --max-turns 12 --iterations 5

Run with OMP_NUM_THREADS set (threads are printed). Without TRL (plain venv) our side is still measured and printed.
The last line printed is the ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

import torch
from transformers import PrinterCallback, TrainerCallback

from empg.envs import make, split_seeds
from empg.policy import Policy
from empg.rollout import prompts
from empg.rollout.collect import INVALID_ACTION
from empg.rollout.corpus import env_corpus

ENV_ID = "household-v0"
SCENE = "small"
PHASES = ("generate", "score", "update")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-1m", help="model spec built by empg (saved once; both trainers load it)")
    ap.add_argument("--n-tasks", type=int, default=4, help="tasks (GRPO groups) per iteration: the first N train seeds")
    ap.add_argument("--group-size", type=int, default=4, help="rollouts per task (TRL's num_generations)")
    ap.add_argument("--max-turns", type=int, default=8, help="turn limit of an episode")
    ap.add_argument("--max-new-tokens", type=int, default=48, help="response cap per turn, in tokens")
    ap.add_argument("--lr", type=float, default=1e-6, help="AdamW learning rate (both trainers)")
    ap.add_argument("--iterations", type=int, default=3, help="measured iterations per trainer, after 1 warm-up")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 tasks x 2, 2 turns, 1 iteration")
    ap.add_argument("--skip-trl", action="store_true", help="measure our trainer only")
    ap.add_argument("--workdir", default=None, help="where the model and both runs go (default: a temporary dir)")
    args = ap.parse_args()
    if args.quick:
        args.n_tasks, args.group_size, args.max_turns, args.iterations = 2, 2, 2, 1
    return args


@dataclass
class Result:
    """Per measured iteration: seconds by phase, env steps, real tokens (prompt + response) through the update's
    forward/backward, loss tokens (the model's own), and rows."""

    name: str
    seconds: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in (*PHASES, "total")})
    env_steps: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    loss_tokens: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    error: str | None = None

    def s_per_it(self, key: str = "total") -> float:
        return mean(self.seconds[key])


# ============================================================================= empg
def run_empg(args: argparse.Namespace, model_dir: Path, root: Path) -> Result:
    """`empg train` in this process (empg.train.rl.train) for 1 + N iterations; times from its metrics rows."""
    from empg.train import rl
    from empg.train.config import load_config

    overrides = [
        "seed=0", f"run_dir={root / 'empg-run'}", f"iterations={1 + args.iterations}",
        f"env.id={ENV_ID}", f"env.max_turns={args.max_turns}", f"env.train_pool={args.n_tasks}",
        f"env.kwargs.scene_size={SCENE}", f"model.spec={model_dir}",
        f"rollout.n_tasks={args.n_tasks}", f"rollout.group_size={args.group_size}", "rollout.temperature=1.0",
        f"rollout.max_new_tokens={args.max_new_tokens}", "rollout.history=2", "rollout.constrain_actions=false",
        "algo.base=grpo", "algo.empg=false", "algo.kl_coef=0", "algo.dynamic_sampling=false",
        f"optim.lr={args.lr}", "optim.mini_batches=1", "optim.warmup_steps=0", "optim.weight_decay=0",
        "optim.grad_clip=1.0", "optim.skip_no_signal=false",
        "eval.every=0", "eval.at_start=false", "log.progress=false", "log.plots=false", "log.trajectories=0",
        f"log.checkpoint_every={1 + args.iterations}",
    ]  # fmt: skip
    cfg = load_config(None, overrides)
    packed: list[tuple[int, int, int]] = []
    pack_steps = rl.pack_steps

    def counting_pack(policy, steps):  # the update's batch: real tokens, trained tokens, rows
        batch = pack_steps(policy, steps)
        packed.append((int(batch.attention_mask.sum()), int(batch.response_mask.sum()), batch.input_ids.shape[0]))
        return batch

    rl.pack_steps = counting_pack
    try:
        history = rl.train(cfg)
    finally:
        rl.pack_steps = pack_steps
    res = Result("empg")
    rows = [m for m in history if "time/rollout" in m][1:]  # drop the warm-up iteration
    for m, (tokens, loss_tokens, n_rows) in zip(rows, packed[1:], strict=True):
        for phase, key in zip(PHASES, ("rollout", "scoring", "update"), strict=True):
            res.seconds[phase].append(m[f"time/{key}"])
        res.seconds["total"].append(m["time/total"])
        res.env_steps.append(int(m["train/env_steps"]))
        res.tokens.append(tokens)
        res.loss_tokens.append(loss_tokens)
        res.rows.append(n_rows)
    return res


# ============================================================================= TRL
@dataclass
class Episode:
    env: object
    task: str
    prompt_ids: list[int]
    completion: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    done: bool = False
    invalid: int = 0
    won: bool = False


class EpisodeRollout:
    """TRL's rollout_func: plays one household episode per prompt ("seed:N") for up to max_turns turns with
    trainer.model.generate (batched over the live episodes, re-reading each episode's whole context every turn)."""

    def __init__(self, tokenizer, args: argparse.Namespace, max_positions: int):
        self.tok, self.args, self.max_positions = tokenizer, args, max_positions
        self.log: list[dict[str, float]] = []  # one entry per call: generate seconds, env steps, tokens

    def __call__(self, prompts_in: list[str], trainer) -> dict[str, list]:
        t0 = time.perf_counter()
        eps = [self._reset(int(p.split(":", 1)[1])) for p in prompts_in]
        steps = 0
        for turn in range(self.args.max_turns):
            live = [e for e in eps if not e.done]
            if not live:
                break
            for e, (ids, lps) in zip(live, self._generate(trainer.model, live), strict=True):
                self._step(e, ids, lps, turn)
            steps += len(live)
        self.log.append(
            {
                "generate": time.perf_counter() - t0,
                "env_steps": steps,
                "tokens": sum(len(e.prompt_ids) + len(e.completion) for e in eps),
                "loss_tokens": sum(sum(e.mask) for e in eps),
                "rows": len(eps),
            }
        )
        return {
            "prompt_ids": [e.prompt_ids for e in eps],
            "completion_ids": [e.completion for e in eps],
            "logprobs": [e.logprobs for e in eps],
            "env_mask": [e.mask for e in eps],
            "env_reward": [10.0 * e.won - 0.1 * e.invalid for e in eps],  # empg's reward_scale / invalid_penalty
        }

    def _encode_chat(self, content: str) -> list[int]:
        msgs = [{"role": "user", "content": content}]
        text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return list(self.tok.encode(text, add_special_tokens=False))

    def _reset(self, seed: int) -> Episode:
        env = make(ENV_ID, "train", max_turns=self.args.max_turns, scene_size=SCENE)
        obs, info = env.reset(seed=seed)
        task = str(info.get("task", ""))
        first = prompts.build_messages(
            getattr(env, "family", "household"), task, obs, [], 0, info.get("admissible_actions")
        )
        return Episode(env, task, self._encode_chat(first[0]["content"]))

    @torch.no_grad()
    def _generate(self, model, live: list[Episode]) -> list[tuple[list[int], list[float]]]:
        tok = self.tok
        ctx = [e.prompt_ids + e.completion for e in live]
        width = max(map(len, ctx))
        ids = torch.full((len(ctx), width), tok.pad_token_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, c in enumerate(ctx):  # left padding
            ids[i, width - len(c) :], att[i, width - len(c) :] = torch.tensor(c), 1
        out = model.generate(
            input_ids=ids, attention_mask=att, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
            max_new_tokens=self.args.max_new_tokens, stop_strings=prompts.STOP_STRING, tokenizer=tok,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, output_scores=True,
            return_dict_in_generate=True,
        )  # fmt: skip
        new = out.sequences[:, width:]
        logp = torch.stack(out.scores, 1).log_softmax(-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        result = []
        for i in range(len(live)):
            row = new[i].tolist()
            n = self._length(row)
            result.append((row[:n], logp[i, :n].tolist()))
        return result

    def _length(self, row: list[int]) -> int:
        """Tokens up to and including the first EOS or the token that completes </action>; the rest is padding."""
        if self.tok.eos_token_id in row:
            row = row[: row.index(self.tok.eos_token_id) + 1]
        if prompts.STOP_STRING in self.tok.decode(row):
            return next(k for k in range(1, len(row) + 1) if prompts.STOP_STRING in self.tok.decode(row[:k]))
        return len(row)

    def _step(self, e: Episode, ids: list[int], lps: list[float], turn: int) -> None:
        action = prompts.parse_action(self.tok.decode(ids, skip_special_tokens=True))
        obs, _, terminated, truncated, info = e.env.step(action if action is not None else INVALID_ACTION)
        e.invalid += int(action is None or not info.get("valid", True))
        e.won = bool(info.get("won", False))
        e.completion += ids
        e.logprobs += lps
        e.mask += [1] * len(ids)
        room = self.max_positions - len(e.prompt_ids) - len(e.completion) - self.args.max_new_tokens
        e.done = bool(terminated or truncated or turn + 1 >= self.args.max_turns)
        if e.done:
            return
        admissible = info.get("admissible_actions") or []
        msg = [f"Current observation (step {turn + 2}): {obs.strip()}"]
        msg.append("Admissible actions: " + ", ".join(f"'{a}'" for a in admissible[:50]))
        end = [] if ids and ids[-1] == self.tok.eos_token_id else [self.tok.eos_token_id]
        chunk = end + list(self.tok.encode("\n", add_special_tokens=False)) + self._encode_chat("\n".join(msg))
        if len(chunk) > room:  # the next turn would not fit the model's context: end the episode here
            e.done = True
            return
        e.completion += chunk
        e.logprobs += [0.0] * len(chunk)
        e.mask += [0] * len(chunk)


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (generation + scoring + loss forward/backward + AdamW)."""

    def __init__(self):
        self.t0, self.steps = 0.0, []

    def on_step_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.steps.append(time.perf_counter() - self.t0)


def env_reward(completions, env_reward, **kwargs) -> list[float]:
    return list(env_reward)


def make_trl_trainer(args: argparse.Namespace, model_dir: Path, root: Path, seeds: list[int]):
    from datasets import Dataset
    from transformers import AutoConfig, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    class TimedGRPOTrainer(GRPOTrainer):
        gen_score: list[float] = []

        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            self.gen_score.append(time.perf_counter() - t0)
            return out

    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    config = GRPOConfig(
        output_dir=str(root / "trl-run"), max_steps=1 + args.iterations, seed=0,
        per_device_train_batch_size=args.n_tasks * args.group_size, gradient_accumulation_steps=1,
        num_generations=args.group_size, num_iterations=1, learning_rate=args.lr, lr_scheduler_type="constant",
        weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", beta=0.0, epsilon=0.2, loss_type="dapo",
        scale_rewards="group", temperature=1.0, max_completion_length=args.max_turns * args.max_new_tokens,
        use_vllm=False, use_cpu=True, bf16=False, fp16=False, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, log_level="error", dataloader_num_workers=0,
    )  # fmt: skip
    rollout = EpisodeRollout(tok, args, AutoConfig.from_pretrained(model_dir).max_position_embeddings)
    timer = StepTimer()
    trainer = TimedGRPOTrainer(
        model=str(model_dir), reward_funcs=env_reward, args=config, processing_class=tok, callbacks=[timer],
        train_dataset=Dataset.from_dict({"prompt": [f"seed:{s}" for s in seeds]}), rollout_func=rollout,
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # no log dict per step
    return trainer, rollout, timer


def run_trl(args: argparse.Namespace, model_dir: Path, root: Path, seeds: list[int]) -> Result:
    res = Result("TRL GRPOTrainer")
    try:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5's gradient_checkpointing renames
        trainer, rollout, timer = make_trl_trainer(args, model_dir, root, seeds)
        trainer.train()
    except Exception as err:  # noqa: BLE001 - report where TRL fails, still print our side
        res.error = where_it_failed(err)
        return res
    n = len(timer.steps)
    if not (n == len(trainer.gen_score) == len(rollout.log) == 1 + args.iterations):
        res.error = f"expected {1 + args.iterations} steps, got {n} steps / {len(rollout.log)} rollouts"
        return res
    for total, gen_score, log in list(zip(timer.steps, trainer.gen_score, rollout.log, strict=True))[1:]:
        res.seconds["generate"].append(log["generate"])
        res.seconds["score"].append(gen_score - log["generate"])
        res.seconds["update"].append(total - gen_score)
        res.seconds["total"].append(total)
        res.env_steps.append(int(log["env_steps"]))
        res.tokens.append(int(log["tokens"]))
        res.loss_tokens.append(int(log["loss_tokens"]))
        res.rows.append(int(log["rows"]))
    return res


def where_it_failed(err: BaseException) -> str:
    """The exception and the innermost frame of TRL (or else the innermost frame) it was raised from."""
    frames = traceback.extract_tb(err.__traceback__)
    in_trl = [f for f in frames if f"{os.sep}trl{os.sep}" in f.filename]
    f = (in_trl or frames or [None])[-1]
    where = f" at {f.filename}:{f.lineno} in {f.name}: {f.line}" if f is not None else ""
    hint = " (run it with the venv of scripts/trl-bench-env.sh)" if isinstance(err, ImportError) else ""
    return f"{type(err).__name__}: {err}{where}{hint}"


# ============================================================================= report
def report(args: argparse.Namespace, n_params: int, results: list[Result]) -> None:
    print(f"model={args.model} ({n_params / 1e6:.2f}M params, fp32, cpu) env={ENV_ID} scene_size={SCENE} "
          f"tasks={args.n_tasks} x group={args.group_size} max_turns={args.max_turns} "
          f"max_new_tokens={args.max_new_tokens} lr={args.lr:g} iterations={args.iterations} (+1 warm-up) "
          f"threads={torch.get_num_threads()}")  # fmt: skip
    print("structure: empg trains per-step rows (prompt = task + last 2 observation/action pairs + current "
          "observation, then the response); TRL trains one concatenated episode per rollout (prompt + responses + "
          "observations, observation tokens masked out of the loss)")  # fmt: skip
    print(f"{'':>16} {'s/it':>8} {'generate':>9} {'score':>7} {'update':>7} {'env-steps/s':>12} "
          f"{'env-steps/it':>13} {'rows/it':>8} {'tokens/it':>10} {'loss-tok/it':>12}")  # fmt: skip
    for r in results:
        if r.error is not None:
            print(f"{r.name:>16} FAILED: {r.error}")
            continue
        print(f"{r.name:>16} {r.s_per_it():8.2f} {r.s_per_it('generate'):9.2f} {r.s_per_it('score'):7.2f} "
              f"{r.s_per_it('update'):7.2f} {mean(r.env_steps) / r.s_per_it():12.2f} {mean(r.env_steps):13.1f} "
              f"{mean(r.rows):8.1f} {mean(r.tokens):10.0f} {mean(r.loss_tokens):12.0f}")  # fmt: skip
    print(
        "s/it = wall time of one iteration (1 optimizer step), mean of the measured ones; tokens/it = real "
        "(unpadded) prompt + response tokens through the update's forward/backward; loss-tok/it = the model's own"
    )
    ours, trl = results
    if trl.error is None:
        print(f"ratio TRL/empg s/it: {trl.s_per_it() / ours.s_per_it():.2f}x")
    else:
        print("ratio TRL/empg s/it: n/a (TRL failed, see above)")


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        root = Path(args.workdir or tmp)
        policy = Policy.from_spec(args.model, corpus=env_corpus)
        model_dir = root / "model"
        policy.save(model_dir)
        n_params = sum(p.numel() for p in policy.model.parameters())
        del policy
        seeds = split_seeds("train", args.n_tasks)  # = empg's task pool with env.train_pool = n_tasks
        ours = run_empg(args, model_dir, root)
        trl = Result("TRL GRPOTrainer", error="skipped (--skip-trl)")
        if not args.skip_trl:
            trl = run_trl(args, model_dir, root, seeds)
        report(args, n_params, [ours, trl])


if __name__ == "__main__":
    main()
