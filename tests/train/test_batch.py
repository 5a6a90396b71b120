import pytest
import torch

from empg.rollout.types import StepRecord
from empg.train.batch import StepBatch, sft_batch


def _rec(traj, step, prompt, resp, group=0, last=False, logp=None, act=None):
    return StepRecord(
        group_id=group,
        traj_id=traj,
        step_idx=step,
        is_last=last,
        env_id="fake-v0",
        seed=0,
        task_type="t",
        prompt_ids=prompt,
        response_ids=resp,
        response_text="",
        action=None,
        valid=True,
        parsed=True,
        env_reward=0.0,
        won=False,
        terminated=False,
        truncated=False,
        old_logprobs=logp,
        token_entropies=None if logp is None else [0.5] * len(resp),
        action_token_mask=act,
    )


def _records():
    return [
        _rec(0, 0, [11, 12, 13], [21, 22], group=0, logp=[-0.1, -0.2], act=[0, 1]),
        _rec(0, 1, [14], [23, 24, 25], group=0, last=True, logp=[-0.3, -0.4, -0.5], act=[1, 1, 0]),
        _rec(1, 0, [15, 16], [26], group=1, last=True, logp=[-0.6], act=[1]),
    ]


def test_layout_golden():
    b = StepBatch.from_records(_records(), pad_id=0)
    # P = 3 (longest prompt), R = 3 (longest response), L = 6
    assert b.response_start == 3
    assert b.input_ids.tolist() == [[11, 12, 13, 21, 22, 0], [0, 0, 14, 23, 24, 25], [0, 15, 16, 26, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]]
    assert b.response_mask.tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 0, 0]]
    assert b.action_mask.tolist() == [[0, 0, 0, 0, 1, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 0, 0]]
    torch.testing.assert_close(b.old_logprobs[1], torch.tensor([0, 0, 0, -0.3, -0.4, -0.5]))
    assert b.token_entropy.sum().item() == pytest.approx(0.5 * 6)
    assert b.group_id.tolist() == [0, 0, 1] and b.traj_id.tolist() == [0, 0, 1]
    assert b.step_idx.tolist() == [0, 1, 0] and b.is_last.tolist() == [False, True, True]
    assert b.advantages.abs().sum() == 0 and b.response_mask.dtype == torch.float32


def test_masks_cover_exactly_the_response_tokens():
    recs = _records()
    b = StepBatch.from_records(recs, pad_id=0)
    for i, r in enumerate(recs):
        assert b.input_ids[i][b.response_mask[i] == 1].tolist() == r.response_ids
        assert b.input_ids[i][(b.attention_mask[i] == 1) & (b.response_mask[i] == 0)].tolist() == r.prompt_ids
    assert ((b.action_mask == 1) <= (b.response_mask == 1)).all()


def test_ids_follow_rows_after_shuffle_select_and_split():
    recs = _records()
    b = StepBatch.from_records(recs, pad_id=0)
    perm = torch.tensor([2, 0, 1])
    s = b.select(perm)
    for row, i in enumerate(perm.tolist()):
        assert s.traj_id[row] == recs[i].traj_id and s.step_idx[row] == recs[i].step_idx
        assert s.input_ids[row][s.response_mask[row] == 1].tolist() == recs[i].response_ids
    parts = s.split(2)
    assert [len(p) for p in parts] == [2, 1] and parts[1].traj_id.tolist() == [recs[1].traj_id]
    assert all(p.response_start == b.response_start and p.input_ids.shape[1] == 6 for p in parts)
    assert b.to("cpu").input_ids.equal(b.input_ids)


def test_max_len_truncates_prompts_from_the_left():
    b = StepBatch.from_records(_records(), pad_id=0, max_len=5)  # R = 3 → prompts keep their last 2 tokens
    assert b.input_ids.tolist() == [[12, 13, 21, 22, 0], [0, 14, 23, 24, 25], [15, 16, 26, 0, 0]]
    with pytest.raises(ValueError, match="max_len"):
        StepBatch.from_records(_records(), pad_id=0, max_len=3)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="empty"):
        StepBatch.from_records([], pad_id=0)
    with pytest.raises(ValueError, match="old_logprobs has 1 values for 2"):
        StepBatch.from_records([_rec(0, 0, [1], [2, 3], logp=[-0.1])], pad_id=0)
    with pytest.raises(ValueError, match="at least one token"):
        sft_batch([[1]], [[]], 0)
    with pytest.raises(ValueError, match="micro_batch_size"):
        sft_batch([[1]], [[2]], 0).split(0)


def test_sft_batch_layout():
    b = sft_batch([[1, 2], [3]], [[4], [5, 6]], pad_id=9)
    assert b.input_ids.tolist() == [[1, 2, 4, 9], [9, 3, 5, 6]]
    assert b.response_mask.tolist() == [[0, 0, 1, 0], [0, 0, 1, 1]]
    assert b.traj_id.tolist() == [0, 1] and b.old_logprobs.abs().sum() == 0
