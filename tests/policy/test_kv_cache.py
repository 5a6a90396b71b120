"""BufferedLayer: the in-place KV-cache layer of the batched decode loop behaves like transformers' DynamicLayer."""

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from empg.policy.kv_cache import BufferedLayer


def _pair(gen, b=3, h=2, n=4, d=5):
    return torch.randn(b, h, n, d, generator=gen), torch.randn(b, h, n, d, generator=gen)


def test_updates_match_dynamic_layer_including_growth_selection_and_crop():
    gen = torch.Generator().manual_seed(0)
    k0, v0 = _pair(gen)
    ref = DynamicLayer()
    ref.update(k0, v0)
    buf_k = torch.zeros(3, 2, 6, 5)
    buf_v = torch.zeros(3, 2, 6, 5)
    buf_k[:, :, :4], buf_v[:, :, :4] = k0, v0
    layer = BufferedLayer(buf_k, buf_v, length=4)
    for step in range(5):  # room for 2, then the buffers grow
        k, v = _pair(gen, n=1)
        want, got = ref.update(k, v), layer.update(k, v)
        for w, g in zip(want, got, strict=True):
            torch.testing.assert_close(g, w, atol=0, rtol=0)
        assert layer.get_seq_length() == 5 + step
    sel = torch.tensor([2, 0, 0])
    ref.batch_select_indices(sel)
    layer.batch_select_indices(sel)
    ref.crop(-2)
    layer.crop(-2)
    k, v = _pair(gen, n=1)
    for w, g in zip(ref.update(k, v), layer.update(k, v), strict=True):
        torch.testing.assert_close(g, w, atol=0, rtol=0)
    assert layer.keys.shape == (3, 2, 8, 5)


def test_rejects_inconsistent_buffers():
    with pytest.raises(ValueError, match="bad buffers"):
        BufferedLayer(torch.zeros(1, 2, 4, 5), torch.zeros(1, 2, 4, 5), length=6)
