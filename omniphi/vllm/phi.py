"""Phi (Phi-2, the mission's LLM) as a vLLM model: vLLM's parallel layers, paged attention and rotary kernel.

vLLM 0.32 has no Phi of its own: it runs `PhiForCausalLM` through its Transformers backend, where
transformers' Phi attention (it transposes heads before its partial rotary embedding) fails on the
CPU build (`apply_rotary_pos_emb`: size mismatch). omniphi's model therefore builds its LLM from this
class when the text config is a Phi (registered as `OmniPhiForCausalLM`, so a plain Phi served by
vLLM without omniphi is not affected).

Phi's decoder layer, as transformers defines it: one LayerNorm feeds attention and the MLP in
parallel, and the layer returns `input + attention + mlp`. Attention has biases everywhere and
rotates only the first `partial_rotary_factor` of each head (neox style); the MLP is fc1 → GELU
(tanh) → fc2; the LM head has a bias. Weights load from transformers' names (q/k/v_proj into one
fused QKV matrix). Tensor and pipeline parallel: heads and MLP columns split over the TP group; the
layers over the PP group, which pass `hidden_states` only (no separate residual stream).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

import torch
from torch import nn
from transformers import PhiConfig

from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import get_pp_group, get_tensor_model_parallel_world_size
from vllm.model_executor.layers.activation import get_act_fn
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import LayerNorm
from vllm.model_executor.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import SupportsPP
from vllm.model_executor.models.utils import (
    PPMissingLayer,
    is_pp_missing_parameter,
    make_empty_intermediate_tensors_factory,
    make_layers,
    maybe_prefix,
)
from vllm.sequence import IntermediateTensors

ARCHITECTURE = "OmniPhiForCausalLM"

# transformers' separate q/k/v projections → vLLM's fused one (shard ids QKVParallelLinear understands)
_QKV_SHARDS = {"q_proj": "q", "k_proj": "k", "v_proj": "v"}


class PhiAttention(nn.Module):
    def __init__(self, config: PhiConfig, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        tp_size = get_tensor_model_parallel_world_size()
        total_heads = config.num_attention_heads
        total_kv_heads = getattr(config, "num_key_value_heads", None) or total_heads
        if total_heads % tp_size:
            raise ValueError(f"{total_heads} attention heads do not split over tensor-parallel size {tp_size}")
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // total_heads
        self.num_heads = total_heads // tp_size
        self.num_kv_heads = max(1, total_kv_heads // tp_size)
        quant_config = vllm_config.quant_config
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, total_heads, total_kv_heads, bias=True,
                                          quant_config=quant_config, prefix=f"{prefix}.qkv_proj")
        self.dense = RowParallelLinear(total_heads * self.head_dim, config.hidden_size, bias=True,
                                       quant_config=quant_config, prefix=f"{prefix}.dense")
        if getattr(config, "qk_layernorm", False):
            raise ValueError("Phi with qk_layernorm is not supported by omniphi's vLLM model")
        # rope_parameters carries rope_theta and partial_rotary_factor (transformers v5)
        self.rotary_emb = get_rope(self.head_dim, max_position=config.max_position_embeddings, is_neox_style=True,
                                   rope_parameters=getattr(config, "rope_parameters", None))
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim ** -0.5, num_kv_heads=self.num_kv_heads,
                              cache_config=vllm_config.cache_config, quant_config=quant_config, prefix=f"{prefix}.attn")
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        output, _ = self.dense(self.attn(q, k, v))
        return output


class PhiMLP(nn.Module):
    def __init__(self, config: PhiConfig, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        quant_config = vllm_config.quant_config
        self.fc1 = ColumnParallelLinear(config.hidden_size, config.intermediate_size, bias=True,
                                        quant_config=quant_config, prefix=f"{prefix}.fc1")
        self.fc2 = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=True,
                                     quant_config=quant_config, prefix=f"{prefix}.fc2")
        self.act = get_act_fn(config.hidden_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states, _ = self.fc1(hidden_states)
        hidden_states, _ = self.fc2(self.act(hidden_states))
        return hidden_states


class PhiDecoderLayer(nn.Module):
    def __init__(self, config: PhiConfig, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        self.input_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = PhiAttention(config, vllm_config, f"{prefix}.self_attn")
        self.mlp = PhiMLP(config, vllm_config, f"{prefix}.mlp")

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        normed = self.input_layernorm(hidden_states)
        return hidden_states + self.self_attn(positions, normed) + self.mlp(normed)


# The token dimension varies between steps (string annotations hide it from vLLM's own inference).
@support_torch_compile(dynamic_arg_dims={"input_ids": 0, "positions": 0, "intermediate_tensors": 0, "inputs_embeds": 0})
class PhiModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config: PhiConfig = vllm_config.model_config.hf_config
        self.config = config
        if get_pp_group().is_first_rank:
            self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                       quant_config=vllm_config.quant_config)
        else:
            self.embed_tokens = PPMissingLayer()
        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers, lambda prefix: PhiDecoderLayer(config, vllm_config, prefix),
            prefix=f"{prefix}.layers")
        if get_pp_group().is_last_rank:
            self.final_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        else:
            self.final_layernorm = PPMissingLayer()
        self.make_empty_intermediate_tensors = make_empty_intermediate_tensors_factory(["hidden_states"],
                                                                                       config.hidden_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None, inputs_embeds: torch.Tensor | None = None
                ) -> torch.Tensor | IntermediateTensors:
        if get_pp_group().is_first_rank:
            hidden_states = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
        else:
            hidden_states = intermediate_tensors["hidden_states"]
        for layer in islice(self.layers, self.start_layer, self.end_layer):
            hidden_states = layer(positions, hidden_states)
        if not get_pp_group().is_last_rank:
            return IntermediateTensors({"hidden_states": hidden_states})
        return self.final_layernorm(hidden_states)


class OmniPhiForCausalLM(nn.Module, SupportsPP):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config: PhiConfig = vllm_config.model_config.hf_config
        self.config = config
        self.model = PhiModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        if get_pp_group().is_last_rank:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, bias=True,
                                          quant_config=vllm_config.quant_config, prefix=maybe_prefix(prefix, "lm_head"))
            if getattr(config, "tie_word_embeddings", False):
                self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
            self.logits_processor = LogitsProcessor(config.vocab_size)
        else:
            self.lm_head = PPMissingLayer()
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None, inputs_embeds: torch.Tensor | None = None
                ) -> torch.Tensor | IntermediateTensors:
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states, self.lm_head.bias)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            shard = None
            for hf_name, shard_id in _QKV_SHARDS.items():
                if f".{hf_name}." in name:
                    name, shard = name.replace(f".{hf_name}.", ".qkv_proj."), shard_id
                    break
            if is_pp_missing_parameter(name, self):
                continue
            if name not in params:
                if name.startswith("lm_head.") and getattr(self.config, "tie_word_embeddings", False):
                    continue  # tied: the embedding's copy is the head
                raise ValueError(f"unexpected Phi weight {name!r}")
            param = params[name]
            if shard is not None:
                param.weight_loader(param, tensor, shard)
            else:
                getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            loaded.add(name)
        return loaded
