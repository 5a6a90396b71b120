"""Generation: our ``Policy.generate`` vs Hugging Face ``model.generate`` on the same prompts, in one run.

Same model, the same left-padded household prompts (the trainer's own, taken from short rollouts so they carry
history and the admissible actions), the same cap on new tokens, T = 1.0, both stopping a row at EOS. Ours samples
with a KV cache and records every token's log-prob and entropy; HF's is ``generate(do_sample=True,
output_scores=True, return_dict_in_generate=True)``, which returns the scores but computes neither. Throughput is
the tokens each side really generated (up to EOS) over all timed calls divided by their total time. The calls
alternate sides after one untimed warm-up each, and call k samples with seed k on both sides: a call lasts as long
as its longest row, so at small batches one call's tokens/s depends on the lengths it happened to sample (at batch
4 one seed gave 125 tokens in a call of 48 steps, another 181), and only a sum over several seeds compares like
with like.

    python benchmarks/bench_generate.py                                    # tiny-1m at batch 4, 16, 32
    python benchmarks/bench_generate.py --model smollm2-135m --batches 4
    python benchmarks/bench_generate.py --model household-tiny-take-first  # the quick start's warm start

The last line is the ratio at the last batch size (> 1: ours is faster).
"""

from __future__ import annotations

import argparse
import time

import torch

from common import household_prompts, load_policy
from empg.policy import Policy, SamplingParams


def ours(policy: Policy, prompts: list[list[int]], new: int, seed: int = 0) -> int:
    gen = torch.Generator().manual_seed(seed)
    out = policy.generate(
        prompts, sampling=SamplingParams(temperature=1.0, max_new_tokens=new), generator=gen, record=True
    )
    return sum(len(g.response_ids) for g in out)


def hf(policy: Policy, prompts: list[list[int]], new: int, seed: int = 0) -> int:
    width = max(len(p) for p in prompts)
    pad, eos = policy.pad_id, policy.tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attn = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    torch.manual_seed(seed)
    out = policy.model.generate(
        input_ids=ids,
        attention_mask=attn,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=new,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    return sum(_until_eos(row.tolist(), eos) for row in out.sequences[:, width:])


def throughputs(policy: Policy, prompts: list[list[int]], new: int, repeats: int) -> tuple[float, float]:
    """Tokens/s of ours and of HF: real tokens over total time of ``repeats`` interleaved calls per side, call k
    with sampling seed k on both, after one untimed warm-up call each."""
    sides = (ours, hf)
    for side in sides:
        side(policy, prompts, new)
    tokens, seconds = [0, 0], [0.0, 0.0]
    for k in range(repeats):
        for i, side in enumerate(sides):
            t0 = time.perf_counter()
            tokens[i] += side(policy, prompts, new, seed=k + 1)
            seconds[i] += time.perf_counter() - t0
    return tokens[0] / seconds[0], tokens[1] / seconds[1]


def _until_eos(row: list[int], eos: int | None) -> int:
    """Tokens a row really generated: up to and including its first EOS (HF pads finished rows)."""
    return row.index(eos) + 1 if eos in row else len(row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-1m", help="tiny-1m | tiny-5m | tiny-25m | smollm2-135m | warm start | dir")
    ap.add_argument("--batches", default="4,16,32", help="comma-separated batch sizes (prompts per call)")
    ap.add_argument("--max-new-tokens", type=int, default=48, help="new tokens per prompt (both sides)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per side and batch size (seeds 1..repeats)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    policy = load_policy(args.model)
    policy.model.eval()
    batches = [int(b) for b in args.batches.split(",")]
    prompts_all = household_prompts(policy, max(batches))
    print(f"model {args.model}, {args.threads} threads, {args.max_new_tokens} new tokens, T=1.0")
    print(f"{'batch':>5} {'prompt tok':>10} {'ours tok/s':>10} {'HF tok/s':>10} {'ours/HF':>8}")
    ratio = float("nan")
    for b in batches:
        prompts = prompts_all[:b]
        with torch.no_grad():
            tps_ours, tps_hf = throughputs(policy, prompts, args.max_new_tokens, args.repeats)
        ratio = tps_ours / tps_hf
        mean_prompt = sum(len(p) for p in prompts) / b
        print(f"{b:>5} {mean_prompt:>10.0f} {tps_ours:>10.1f} {tps_hf:>10.1f} {ratio:>7.2f}x")
    print(f"generation throughput, ours / HF generate at batch {batches[-1]}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
