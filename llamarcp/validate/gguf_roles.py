"""Which GGUF tensors llama.cpp combines element-wise with F32 activations, so must be stored as F32.

ggml's CPU kernels for ADD/SUB/MUL/DIV (ggml/src/ggml-cpu/binary-ops.cpp) take an F32 first operand only with
an F32 second operand, and abort the process otherwise (`unsupported types: dst: f32, src0: f32, src1: f16`);
ADD_ID, the SSM/RWKV kernels and the rope frequency factors read their weight as raw floats. The CPU backend's
`supports_op` still accepts these pairs, so llama.cpp loads such a file and aborts at the first decode.

`F32_ROLES` maps the name pattern of each tensor (`%d` a block or sub-index, as in llama.cpp's
`LLM_TENSOR_NAMES`) to the op `LLM_TENSOR_INFOS` (src/llama-arch.cpp) declares for it, for every op that
needs F32: norms, scales, `ssm_*`/`time_mix_*` vectors, rope factors. A name two tensor kinds share with ops
that disagree is left out. `tests/test_validate_gguf_types.py` re-derives the table from the pinned source.
Besides the table, llama.cpp always adds a `.bias` to its activations (ADD, or ADD_ID for expert biases) and
multiplies by a `.scale`, and the BERT graph adds `token_types` row 0 through a view (declared GET_ROWS there).
"""

from __future__ import annotations

import re

__all__ = ["F32_ROLES", "F32_SUFFIXES", "GRAPH_F32_ROLES", "f32_role"]

#: From LLM_TENSOR_NAMES x LLM_TENSOR_INFOS of llama.cpp b11549: name pattern -> op that needs an F32 weight.
F32_ROLES: dict[str, str] = {
    "blk.%d.altup_correct_scale": "MUL",
    "blk.%d.altup_router_norm": "MUL",
    "blk.%d.attn_compressor_norm": "MUL",
    "blk.%d.attn_conv_base": "MUL",
    "blk.%d.attn_k_norm": "MUL",
    "blk.%d.attn_kv_a_norm": "MUL",
    "blk.%d.attn_norm": "MUL",
    "blk.%d.attn_norm_2": "MUL",
    "blk.%d.attn_output_norm": "MUL",
    "blk.%d.attn_q_a_norm": "MUL",
    "blk.%d.attn_q_norm": "MUL",
    "blk.%d.attn_res_score": "MUL",
    "blk.%d.attn_sinks": "SCALE",
    "blk.%d.attn_sub_norm": "MUL",
    "blk.%d.channel_mix_lerp_k": "MUL",
    "blk.%d.channel_mix_lerp_r": "MUL",
    "blk.%d.exp_probs_b": "ADD",
    "blk.%d.exp_probs_b_vl": "ADD",
    "blk.%d.ffn.act": "DIV",
    "blk.%d.ffn_conv_base": "MUL",
    "blk.%d.ffn_norm": "MUL",
    "blk.%d.ffn_norm_exps": "MUL",
    "blk.%d.ffn_res_score": "MUL",
    "blk.%d.ffn_routed_norm": "MUL",
    "blk.%d.ffn_sub_norm": "MUL",
    "blk.%d.hc_attn_base": "ADD",
    "blk.%d.hc_attn_norm": "MUL",
    "blk.%d.hc_attn_scale": "MUL",
    "blk.%d.hc_ffn_base": "ADD",
    "blk.%d.hc_ffn_norm": "MUL",
    "blk.%d.hc_ffn_scale": "MUL",
    "blk.%d.indexer.k_norm": "MUL",
    "blk.%d.indexer.q_norm": "MUL",
    "blk.%d.indexer_compressor_norm": "MUL",
    "blk.%d.laurel_post_norm": "MUL",
    "blk.%d.layer_output_norm": "MUL",
    "blk.%d.layer_output_scale": "MUL",
    "blk.%d.nextn.enorm": "MUL",
    "blk.%d.nextn.hc_head_norm": "MUL",
    "blk.%d.nextn.hnorm": "MUL",
    "blk.%d.nextn.shared_head_norm": "MUL",
    "blk.%d.ple_conv1d": "SSM_CONV",
    "blk.%d.ple_norm_conv": "MUL",
    "blk.%d.ple_norm_key": "MUL",
    "blk.%d.ple_norm_query": "MUL",
    "blk.%d.post_attention_norm": "MUL",
    "blk.%d.post_ffw_norm": "MUL",
    "blk.%d.post_ffw_norm_1": "MUL",
    "blk.%d.post_ffw_norm_2": "MUL",
    "blk.%d.post_norm": "MUL",
    "blk.%d.pre_ffw_norm_2": "MUL",
    "blk.%d.shortconv.conv": "SSM_CONV",
    "blk.%d.ssm_a": "MUL",
    "blk.%d.ssm_b_norm": "MUL",
    "blk.%d.ssm_c_norm": "MUL",
    "blk.%d.ssm_conv1d": "SSM_CONV",
    "blk.%d.ssm_conv1d_k": "MUL",
    "blk.%d.ssm_conv1d_q": "MUL",
    "blk.%d.ssm_conv1d_v": "MUL",
    "blk.%d.ssm_d": "MUL",
    "blk.%d.ssm_dt_norm": "MUL",
    "blk.%d.ssm_norm": "MUL",
    "blk.%d.time_mix_a0": "ADD",
    "blk.%d.time_mix_decay": "ADD",
    "blk.%d.time_mix_first": "RWKV_WKV6",
    "blk.%d.time_mix_k_a": "MUL",
    "blk.%d.time_mix_k_k": "MUL",
    "blk.%d.time_mix_lerp_fused": "ADD",
    "blk.%d.time_mix_lerp_g": "ADD",
    "blk.%d.time_mix_lerp_k": "ADD",
    "blk.%d.time_mix_lerp_r": "ADD",
    "blk.%d.time_mix_lerp_v": "ADD",
    "blk.%d.time_mix_lerp_w": "ADD",
    "blk.%d.time_mix_lerp_x": "MUL",
    "blk.%d.time_mix_ln": "MUL",
    "blk.%d.time_mix_r_k": "MUL",
    "blk.%d.time_mix_v0": "ADD",
    "blk.%d.time_mix_w0": "ADD",
    "cls.norm": "MUL",
    "convnext.%d.gamma": "MUL",
    "convnext.%d.norm": "MUL",
    "dec.blk.%d.attn_norm": "MUL",
    "dec.blk.%d.cross_attn_norm": "MUL",
    "dec.blk.%d.cross_attn_norm_kv": "MUL",
    "dec.blk.%d.ffn_norm": "MUL",
    "dec.output_norm": "MUL",
    "decision.field_norm": "MUL",
    "decision.hidden_norm": "MUL",
    "decision.option_norm": "MUL",
    "decision.option_summary_norm": "MUL",
    "decision.scales": "MUL",
    "enc.blk.%d.attn_norm": "MUL",
    "enc.blk.%d.ffn_norm": "MUL",
    "enc.output_norm": "MUL",
    "hrm.z_l_init": "ADD",
    "output_hc_base": "ADD",
    "output_hc_norm": "MUL",
    "output_hc_scale": "MUL",
    "output_norm": "MUL",
    "output_res_score": "MUL",
    "per_layer_proj_norm": "MUL",
    "posnet.%d.attn_norm": "MUL",
    "posnet.%d.norm": "MUL",
    "posnet.%d.norm1": "MUL",
    "posnet.%d.norm2": "MUL",
    "rope_factors_long": "ROPE",
    "rope_factors_short": "ROPE",
    "rope_freqs": "ROPE",
    "token_embd_norm": "MUL",
}

#: Suffixes llama.cpp's loader always uses element-wise ("bias": GGML_OP_ADD; "scale": GGML_OP_MUL).
F32_SUFFIXES: dict[str, str] = {"bias": "ADD", "scale": "MUL"}

#: Tensors a model graph uses element-wise although LLM_TENSOR_INFOS declares another op (src/models/*.cpp).
GRAPH_F32_ROLES: dict[str, str] = {"token_types": "ADD"}  # bert.cpp: ggml_add(inpL, ggml_view_1d(type_embd))


_STEMS: list[tuple[str, str]] = [*F32_ROLES.items(), *GRAPH_F32_ROLES.items()]


def _pattern() -> re.Pattern[str]:
    """One regex: group `r<i>` matches the i-th stem (indices as digits), then an optional `.suffix`."""
    alternatives = "|".join(
        f"(?P<r{i}>{re.escape(stem).replace('%d', r'[0-9]+')})" for i, (stem, _) in enumerate(_STEMS)
    )
    return re.compile(rf"(?:{alternatives})(?:\.[A-Za-z0-9_]+)?")


_ROLE = _pattern()


def f32_role(name: str) -> str | None:
    """The ggml op that makes tensor `name` need F32 (for the error message), or None when any type will do."""
    match = _ROLE.fullmatch(name)
    if match is not None and match.lastgroup is not None:
        return _STEMS[int(match.lastgroup[1:])][1]
    stem, dot, suffix = name.rpartition(".")
    return F32_SUFFIXES.get(suffix) if dot and stem else None
