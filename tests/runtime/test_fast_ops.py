"""The fast decode paths compute what transformers' own paths compute (omniphi/runtime/fast_ops.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers.activations import NewGELUActivation
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from omniphi import presets
from omniphi.runtime import devices
from omniphi.runtime.fast_ops import DECODE_ATTENTION, FEW_ROWS, FewRowLinear, decode_attention, install_fast_ops
from omniphi.runtime.loading import load


class _Heads(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2)])
def test_decode_attention_equals_sdpa_for_one_query_with_padding_and_grouped_heads(dtype, heads, kv_heads):
    torch.manual_seed(0)
    batch, length, dim = 3, 37, 16
    query = torch.randn(batch, heads, 1, dim, dtype=dtype)
    key = torch.randn(batch, kv_heads, length, dim, dtype=dtype)
    value = torch.randn(batch, kv_heads, length, dim, dtype=dtype)
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    mask[1, ..., :5] = False  # a left-padded row
    mask[2, ..., :20] = False
    module = _Heads(heads // kv_heads)
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    got, _ = decode_attention(module, query, key, value, mask, scaling=0.3)
    assert got.shape == expected.shape == (batch, 1, heads, dim)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), expected.float(), atol=tolerance, rtol=tolerance)
    # a padded position really is ignored: changing its key changes nothing
    key[2, :, :20] = 100.0
    again, _ = decode_attention(module, query, key, value, mask, scaling=0.3)
    torch.testing.assert_close(again, got)


def test_longer_queries_go_to_sdpa_unchanged():
    torch.manual_seed(0)
    query, key, value = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    module = _Heads(1)
    assert torch.equal(decode_attention(module, query, key, value, None)[0],
                       sdpa_attention_forward(module, query, key, value, None)[0])


@pytest.mark.parametrize("flavour", ["phi", "chatml"])
def test_install_fast_ops_keeps_a_padded_batchs_next_token_logits(flavour):
    language_model = presets.tiny_parts(flavour)[0].eval()
    fast = copy.deepcopy(language_model)
    install_fast_ops(fast)
    assert not any(type(m) is NewGELUActivation for m in fast.modules())
    assert fast.config._attn_implementation == DECODE_ATTENTION
    assert not any(type(m) is nn.Linear for m in fast.modules())  # all FewRowLinear
    if language_model.config.tie_word_embeddings:  # the class switch kept the head tied to the embeddings
        assert fast.get_output_embeddings().weight is fast.get_input_embeddings().weight
    ids = torch.randint(0, 100, (2, 30))
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, :7] = 0
    following = torch.randint(0, 100, (2, 1))
    longer = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
    logits = []
    with torch.no_grad():
        for model in (language_model, fast):
            prompt = model(input_ids=ids, attention_mask=mask, use_cache=True)
            step = model(input_ids=following, attention_mask=longer, cache=prompt.past_key_values)
            logits.append((prompt.logits, step.logits))
    for slow, quick in zip(*logits):
        torch.testing.assert_close(quick, slow, atol=1e-5, rtol=1e-5)


def test_load_switches_models_to_the_fast_paths():
    model = load("tiny", dtype="float32").model
    assert model.language_model.config._attn_implementation == DECODE_ATTENTION
    assert not any(type(m) is NewGELUActivation for m in model.modules())


@pytest.mark.parametrize("mv_is_faster", [True, False])  # what the CPU probe says, both ways on any machine
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows", [1, 3, FEW_ROWS + 8])
def test_few_row_linear_computes_what_linear_computes(dtype, rows, mv_is_faster, monkeypatch):
    monkeypatch.setattr(devices, "cpu_bf16_mv_is_faster", lambda: mv_is_faster)
    products = []
    mv, matmul = torch.mv, torch.matmul
    monkeypatch.setattr(torch, "mv", lambda *a: (products.append("mv"), mv(*a))[1])
    monkeypatch.setattr(torch, "matmul", lambda *a: (products.append("matmul"), matmul(*a))[1])
    torch.manual_seed(0)
    plain = nn.Linear(64, 48).to(dtype)
    fast = copy.deepcopy(plain)
    fast.__class__ = FewRowLinear
    x = torch.randn(1, rows, 64, dtype=dtype)  # [batch, sequence, features], as the LLM calls it
    expected = copy.deepcopy(plain).float()(x.float())  # the same weights, summed in float32
    got = fast(x)
    assert got.shape == (1, rows, 48) and got.dtype == dtype
    tolerance = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(got.float(), expected, atol=tolerance, rtol=tolerance)
    # no worse than torch's own half-precision linear
    own_error = (plain(x).float() - expected).abs().max()
    assert (got.float() - expected).abs().max() <= 2 * own_error + 1e-6
    weight_times_inputs = mv_is_faster and dtype != torch.float32 and rows <= FEW_ROWS
    assert products == ([("mv" if rows == 1 else "matmul")] if weight_times_inputs else [])
