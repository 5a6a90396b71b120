"""Constrained decoding of action spans: the trie, the masked distribution, recorded vs recomputed quantities."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from empg.algos.entropy import masked_logprobs_and_entropy
from empg.policy import SamplingParams
from empg.policy.constrain import ActionConstraint, TokenTrie
from empg.rollout.prompts import build_messages
from empg.train.batch import pack
from empg.train.forward import response_logprobs

CHOICES = ("go to countertop 1</action>", "take apple 1 from countertop 1</action>", "look</action>")


def _prompt(policy):
    msgs = build_messages("household", "put a clean apple in fridge.", "You arrive at fridge 1.", [], 0, None)
    return policy.chat_prompt_ids(msgs)


def test_trie_children_and_leaves():
    trie = TokenTrie([[1, 2, 3], [1, 4], [5]])
    assert sorted(trie.root) == [1, 5]
    assert sorted(trie.root[1]) == [2, 4]
    assert trie.root[1][4] == {} and trie.root[5] == {}
    assert trie.depth == 3 and bool(trie)
    assert not TokenTrie([])


@pytest.mark.parametrize("seqs", [[[1, 2], [1, 2, 3]], [[1, 2, 3], [1, 2]], [[7], [7]]])
def test_trie_rejects_a_choice_that_is_a_prefix_of_another(seqs):
    if seqs == [[7], [7]]:  # the same sequence twice is one choice, not a prefix
        assert TokenTrie(seqs).root == {7: {}}
        return
    with pytest.raises(ValueError, match="prefix"):
        TokenTrie(seqs)


def test_trie_build_tokenizes_and_deduplicates(tiny):
    trie = TokenTrie.build(tiny.tokenizer, [*CHOICES, CHOICES[0]])
    ids = [tiny.tokenizer.encode(c, add_special_tokens=False) for c in CHOICES]
    for seq in ids:
        node = trie.root
        for t in seq:
            node = node[t]
        assert node == {}
    assert trie.depth == max(len(s) for s in ids)


def test_trie_build_encodes_each_text_once_per_tokenizer(tiny):
    """The choices' ids are remembered per tokenizer: a later build encodes only the texts it has not seen, and a
    remembered text gives the ids the tokenizer gives."""
    from empg.policy import constrain

    calls: list[list[str]] = []

    class Counting:  # the tokenizer's batch call, counted
        def __call__(self, texts, add_special_tokens=False):
            calls.append(list(texts))
            return tiny.tokenizer(texts, add_special_tokens=add_special_tokens)

    tok = Counting()
    first = constrain.encode_cached(tok, list(CHOICES))
    again = constrain.encode_cached(tok, [CHOICES[1], "inventory</action>", CHOICES[0]])
    assert calls == [list(CHOICES), ["inventory</action>"]]
    assert first == [tiny.tokenizer.encode(c, add_special_tokens=False) for c in CHOICES]
    assert again == [first[1], tiny.tokenizer.encode("inventory</action>", add_special_tokens=False), first[0]]
    again[0].append(-1)  # callers get copies: the memo is not theirs to change
    assert constrain.encode_cached(tok, [CHOICES[1]]) == [first[1]]


def test_masked_logprobs_golden_two_actions():
    """Vocab of 4, allowed {1, 3}: p = softmax([z1, z3]) restricted and renormalised; position 2 unconstrained."""
    logits = torch.tensor([[[0.0, 1.0, 5.0, 3.0], [0.0, 1.0, 5.0, 3.0], [0.0, 0.0, 0.0, 0.0]]])  # (1, 3, 4)
    labels = torch.tensor([[3, 1, 2]])
    allowed = torch.tensor([[[1, 3], [3, 1], [-1, -1]]])
    lp, ent, constrained = masked_logprobs_and_entropy(logits, labels, allowed)
    p3 = math.exp(3) / (math.exp(1) + math.exp(3))
    assert constrained.tolist() == [[True, True, False]]
    torch.testing.assert_close(lp[0, 0], torch.tensor(math.log(p3)))
    torch.testing.assert_close(lp[0, 1], torch.tensor(math.log(1 - p3)))
    h = -(p3 * math.log(p3) + (1 - p3) * math.log(1 - p3))
    torch.testing.assert_close(ent[0, :2], torch.tensor([h, h]))
    assert lp[0, 2] == 0 and ent[0, 2] == 0


def test_masked_logprobs_forced_token_is_certain_and_gradients_are_finite():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.randint(0, 11, (2, 5))
    allowed = torch.full((2, 5, 3), -1)
    allowed[0, 1, 0] = labels[0, 1]  # forced
    allowed[1, 2, :2] = torch.tensor([labels[1, 2], (labels[1, 2] + 1) % 11])
    lp, ent, constrained = masked_logprobs_and_entropy(logits, labels, allowed, temperature=0.7)
    assert constrained.sum() == 2
    assert lp[0, 1] == 0 and ent[0, 1] == 0
    (lp.sum() + ent.sum()).backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 0].abs().sum() == 0  # unconstrained positions contribute nothing here


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 9), st.floats(0.3, 2.0), st.integers(0, 10_000))
def test_masked_equals_renormalised_softmax_property(k, temperature, seed):
    g = torch.Generator().manual_seed(seed)
    V = 12
    logits = torch.randn(1, 1, V, generator=g) * 3
    ids = torch.randperm(V, generator=g)[:k]
    label = ids[int(torch.randint(0, k, (1,), generator=g))]
    lp, ent, _ = masked_logprobs_and_entropy(logits, label.view(1, 1), ids.view(1, 1, k), temperature=temperature)
    p = torch.softmax(logits[0, 0] / temperature, -1)[ids]
    p = p / p.sum()
    torch.testing.assert_close(lp[0, 0], torch.log(p[ids.tolist().index(int(label))]), atol=1e-5, rtol=0)
    torch.testing.assert_close(ent[0, 0], -(p * p.log()).sum(), atol=1e-5, rtol=0)


def _constrained_generate(policy, n=6, open_tag="", seed=0, temperature=1.0, choices=CHOICES, jump_forward=False):
    prompt = _prompt(policy)
    prompts = [prompt[: len(prompt) - i] for i in range(n)]  # different lengths: left padding in the batch
    cons = [ActionConstraint(open_tag, choices) for _ in prompts]
    gens = policy.generate(
        prompts,
        sampling=SamplingParams(temperature=temperature, max_new_tokens=6, jump_forward=jump_forward),
        generator=torch.Generator().manual_seed(seed),
        constraints=cons,
    )
    return prompts, gens


def test_constrained_generation_emits_only_choices_and_finishes_them(tiny):
    """With an empty opening tag the whole response is constrained: each is exactly one choice, even when the choice
    is longer than max_new_tokens (the constrained span is not cut)."""
    _, gens = _constrained_generate(tiny, n=8)
    for g in gens:
        assert g.text in CHOICES
        assert g.finish_reason == "stop" and g.constrained is True
        assert len(g.allowed_ids) == len(g.response_ids)
        assert all(t in a for t, a in zip(g.response_ids, g.allowed_ids, strict=True))
    assert max(len(g.response_ids) for g in gens) > 6  # the take choice has more than 6 tokens


@pytest.mark.parametrize("jump_forward", [False, True])
def test_recorded_equals_recomputed_under_the_same_masks(tiny, jump_forward):
    """What generation recorded equals the trainer's recomputation of the packed responses under the same masks (the
    PPO ratio stays exact), also when jump-forward feeds the forced tokens several at a time."""
    choices = CHOICES + ("take apple 1 from fridge 1</action>", "go to fridge 1</action>")
    prompts, gens = _constrained_generate(
        tiny, n=6, temperature=0.8, seed=3, choices=choices, jump_forward=jump_forward
    )
    assert all(g.text in choices for g in gens)
    batch = pack(prompts, [g.response_ids for g in gens], tiny.pad_id, allowed=[g.allowed_ids for g in gens])
    assert batch.allowed is not None
    lp, ent = response_logprobs(tiny.model, batch, temperature=0.8, with_entropy=True)
    P = batch.response_start
    for i, g in enumerate(gens):
        n = len(g.response_ids)
        torch.testing.assert_close(lp[i, P : P + n], torch.tensor(g.logprobs), atol=1e-5, rtol=0)
        torch.testing.assert_close(ent[i, P : P + n], torch.tensor(g.entropies), atol=1e-5, rtol=0)
        forced = [len(a) == 1 for a in g.allowed_ids]
        assert all(abs(x) < 1e-6 for x, f in zip(g.logprobs, forced, strict=True) if f)


def test_two_action_case_by_hand(tiny):
    """Two choices that share every token but one: the branching token's log-prob is log of the model's two-way
    renormalised softmax at that position; all other tokens are forced (log-prob 0, entropy 0)."""
    tok = tiny.tokenizer
    a, b = "go to countertop 1</action>", "go to fridge 1</action>"
    ids_a, ids_b = (tok.encode(x, add_special_tokens=False) for x in (a, b))
    split = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y)
    prompt = _prompt(tiny)
    (g,) = tiny.generate(
        [prompt],
        sampling=SamplingParams(max_new_tokens=4),
        generator=torch.Generator().manual_seed(1),
        constraints=[ActionConstraint("", (a, b))],
    )
    assert g.text in (a, b)
    ctx = torch.tensor([prompt + ids_a[:split]])
    z = tiny.model(input_ids=ctx).logits[0, -1].float()
    pair = torch.log_softmax(z[[ids_a[split], ids_b[split]]], -1)
    chosen = 0 if g.text == a else 1
    torch.testing.assert_close(torch.tensor(g.logprobs[split]), pair[chosen], atol=1e-5, rtol=0)
    others = [i for i in range(len(g.response_ids)) if i != split]
    assert all(abs(g.logprobs[i]) < 1e-6 and abs(g.entropies[i]) < 1e-6 for i in others)


def test_opening_tag_switches_to_constrained_mode(tiny):
    """Free text until the decoded response ends with the opening tag, then exactly one choice. The tag is what the
    model emits greedily anyway (its first two tokens), so the free part is the same greedy text with or without
    the constraint."""
    tok = tiny.tokenizer
    prompt = _prompt(tiny)
    (free,) = tiny.generate([prompt], sampling=SamplingParams(max_new_tokens=8, greedy=True), stop=None)
    tag = tok.decode(free.response_ids[:2])
    (g,) = tiny.generate([prompt], sampling=SamplingParams(max_new_tokens=8, greedy=True), stop=None,
                         constraints=[ActionConstraint(tag, CHOICES)])  # fmt: skip
    assert g.constrained is True
    assert g.response_ids[:2] == free.response_ids[:2] and g.allowed_ids[:2] == [[], []]
    assert g.text[len(tag) :] in CHOICES
    assert all(len(a) > 0 for a in g.allowed_ids[2:])


def test_no_choices_is_free_text_and_flagged(tiny):
    (g,) = tiny.generate(
        [_prompt(tiny)], sampling=SamplingParams(max_new_tokens=5), constraints=[ActionConstraint("", ())]
    )
    assert g.constrained is False and all(a == [] for a in g.allowed_ids)
    (h,) = tiny.generate([_prompt(tiny)], sampling=SamplingParams(max_new_tokens=5))
    assert h.constrained is None and h.allowed_ids is None


def test_household_demo_tokens_split_at_the_opening_tag():
    """The trie's tokens of an action equal that action's tokens inside a whole demo response (byte-level BPE splits
    pre-tokens at '>'), so constrained decoding produces the token sequences SFT trained on."""
    from empg.envs import make, split_seeds
    from empg.policy.tokenizer import train_tokenizer
    from empg.rollout.corpus import env_corpus
    from empg.rollout.prompts import ACTION_OPEN, STOP_STRING, expert_response

    tok = train_tokenizer(env_corpus(("household-v0",), episodes=5))
    env = make("household-v0", "train", scene_size="small", expert="systematic")
    checked = 0
    for seed in split_seeds("train", 3):
        env.reset(seed=seed)
        done = False
        while not done:
            action = env.expert_action()
            text = expert_response("household", action)
            head = text[: text.index(ACTION_OPEN) + len(ACTION_OPEN)]
            whole = tok.encode(text, add_special_tokens=False)
            parts = tok.encode(head, add_special_tokens=False) + tok.encode(
                action + STOP_STRING, add_special_tokens=False
            )
            assert whole == parts, text
            checked += 1
            _, _, term, trunc, _ = env.step(action)
            done = term or trunc
    assert checked > 10


def test_opening_tag_is_forced_when_the_free_budget_runs_out(tiny):
    """An untrained model rarely writes '<action>': after max_new_tokens of free text the tag is forced token by
    token (each the only allowed token: log-prob 0, entropy 0), then a choice follows."""
    tok = tiny.tokenizer
    (g,) = tiny.generate(
        [_prompt(tiny)],
        sampling=SamplingParams(max_new_tokens=5),
        generator=torch.Generator().manual_seed(0),
        stop=None,
        constraints=[ActionConstraint("<action>", CHOICES)],
    )
    tag = tok.encode("<action>", add_special_tokens=False)
    assert g.constrained is True and g.finish_reason == "stop"
    assert g.response_ids[5 : 5 + len(tag)] == tag
    assert g.allowed_ids[:5] == [[]] * 5 and all(g.allowed_ids[5 + i] == [t] for i, t in enumerate(tag))
    assert all(abs(g.logprobs[5 + i]) < 1e-6 for i in range(len(tag)))
    assert tok.decode(g.response_ids[5 + len(tag) :]) in CHOICES


def _count_forwards(policy):
    calls = []
    handle = policy.model.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("open_tag", ["", "<action>"])
def test_jump_forward_greedy_equals_one_token_steps(tiny, open_tag):
    """Greedy decoding with jump-forward emits the same tokens, allowed sets and finish reasons as one decode step
    per token, with the same recorded log-probs and entropies to float rounding, in fewer forwards. Rows of
    different prompt lengths (left padding) and, with the opening tag, free text, a forced tag and then a choice."""
    prompt = _prompt(tiny)
    prompts = [prompt[: len(prompt) - i] for i in range(5)]
    cons = [ActionConstraint(open_tag, CHOICES + ("take apple 1 from fridge 1</action>",)) for _ in prompts]
    runs = {}
    for jump in (False, True):
        calls, handle = _count_forwards(tiny)
        sampling = SamplingParams(max_new_tokens=4, greedy=True, jump_forward=jump)
        runs[jump] = (tiny.generate(prompts, sampling=sampling, stop=None, constraints=cons), len(calls))
        handle.remove()
    (plain, n_plain), (jumped, n_jumped) = runs[False], runs[True]
    for a, b in zip(plain, jumped, strict=True):
        assert (a.response_ids, a.allowed_ids, a.finish_reason, a.constrained) == (
            b.response_ids, b.allowed_ids, b.finish_reason, b.constrained)  # fmt: skip
        torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(b.entropies), torch.tensor(a.entropies), atol=1e-5, rtol=0)
    assert n_jumped < n_plain


def test_jump_forward_takes_two_forwards_for_two_choices_that_share_a_prefix(tiny):
    """Two choices that differ in one token: the prefill, one forward that feeds the (forced) shared prefix, and
    nothing after the branch (the rest is forced up to the leaf, which ends the row): 2 forwards, against the
    response's length without jump-forward. Forced tokens are recorded with log-prob 0, entropy 0 and their one
    allowed id."""
    tok = tiny.tokenizer
    a, b = "take apple 1 from countertop 1</action>", "take apple 1 from fridge 1</action>"
    ids_a, ids_b = (tok.encode(x, add_special_tokens=False) for x in (a, b))
    split = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y)
    assert split >= 2
    counts = {}
    for jump in (False, True):
        calls, handle = _count_forwards(tiny)
        (g,) = tiny.generate(
            [_prompt(tiny)],
            sampling=SamplingParams(max_new_tokens=4, jump_forward=jump),
            generator=torch.Generator().manual_seed(2),
            constraints=[ActionConstraint("", (a, b))],
        )
        handle.remove()
        counts[jump] = (len(calls), len(g.response_ids))
        assert g.text in (a, b) and g.finish_reason == "stop"
        n = len(g.response_ids)
        assert [len(x) for x in g.allowed_ids] == [1] * split + [2] + [1] * (n - split - 1)
        assert all(g.logprobs[i] == 0.0 and g.entropies[i] == 0.0 for i in range(n) if i != split)
    assert counts[True][0] == 2
    assert counts[False][0] == counts[False][1]  # the prefill, then one forward per token but the last
