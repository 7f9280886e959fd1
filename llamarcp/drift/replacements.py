"""Reviewed table: llama.cpp functions removed before the pin -> what replaces them.

Removed functions take their deprecation hint with them out of llama.h, so the scanner would
otherwise only say "undeclared". Each entry was checked against the old header (the 0.3.16 carrier,
llama.cpp 4227c9be) and the pinned one; tests/test_drift_scan.py checks that every key is absent
from the pinned API and every function a hint names is present in it.
Add entries when a bump removes functions (`python -m llamarcp.drift diff OLD NEW` lists them).
"""

from __future__ import annotations

#: removed name -> hint, in the form printed after "->".
REMOVED_FUNCTIONS: dict[str, str] = {
    # KV cache self-attention API, replaced by the memory API (llama_get_memory + llama_memory_*).
    "llama_get_kv_self": "use llama_get_memory",
    "llama_kv_self_clear": "use llama_memory_clear",
    "llama_kv_self_seq_rm": "use llama_memory_seq_rm",
    "llama_kv_self_seq_cp": "use llama_memory_seq_cp",
    "llama_kv_self_seq_keep": "use llama_memory_seq_keep",
    "llama_kv_self_seq_add": "use llama_memory_seq_add",
    "llama_kv_self_seq_div": "use llama_memory_seq_div",
    "llama_kv_self_seq_pos_min": "use llama_memory_seq_pos_min",
    "llama_kv_self_seq_pos_max": "use llama_memory_seq_pos_max",
    "llama_kv_self_can_shift": "use llama_memory_can_shift",
    "llama_kv_self_n_tokens": "use llama_memory_seq_pos_max / llama_memory_seq_pos_min",
    "llama_kv_self_used_cells": "use llama_memory_seq_pos_max / llama_memory_seq_pos_min",
    "llama_kv_self_defrag": "remove the call; the context defragments by itself",
    "llama_kv_self_update": "remove the call; updates are applied lazily on the next llama_decode",
    # LoRA / control vectors: per-adapter calls replaced by one call that sets the whole list.
    "llama_set_adapter_lora": "use llama_set_adapters_lora (takes arrays of adapters and scales)",
    "llama_rm_adapter_lora": "use llama_set_adapters_lora without the adapter",
    "llama_clear_adapter_lora": "use llama_set_adapters_lora with n_adapters = 0",
    "llama_apply_adapter_cvec": "use llama_set_adapter_cvec (same parameters)",
    # Sampling: the dist sampler now computes the softmax itself.
    "llama_sampler_init_softmax": "remove it; llama_sampler_init_dist computes the probabilities",
}
