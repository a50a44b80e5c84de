"""The `torch.ops.dvg.*` ops and their functional wrappers.

Importing this package registers every op (schema + fake implementation + backend dispatch):

| op | wrapper | what |
|---|---|---|
| `dvg::varlen_attention` | `varlen_attention` | FlashAttention-2-style attention over a packed stream (flash_attn_varlen_func convention) |
| `dvg::pack_tokens` / `dvg::unpack_tokens` | `pack_tokens`, `unpack_tokens`, `pack_qk_rope` | per-sample latent + valid text tokens <-> one packed stream (fused 3D RoPE variant) |
| `dvg::resample_renoise` | `resample_renoise`, `resample_renoise_packed` | next stage's latent from x̂0 in one pass (resize, smoothing, coordinate noise, re-noise) |
| `dvg::modulated_layer_norm` | `modulated_layer_norm` | LayerNorm + per-segment AdaLN modulation for packed streams mixing samples |
| `dvg::pack_tokens_out`, `dvg::unpack_tokens_out`, `dvg::pack_qk_rope_out`, `dvg::modulated_layer_norm_out` | the same wrappers with `out=` (`latent_out=`/`text_out=`, `q_out=`/`k_out=`) | write into caller-owned buffers (serving stacks, CUDA graphs); on CPU this avoids the page faults of a fresh output, the op's main cost |

Backends: `torch` (reference, always), `triton` (CUDA; CPU under TRITON_INTERPRET=1), `cpp` (CPU, the
`dvg_engine._C` extension). Choose with `DVG_BACKEND=auto|torch|triton|cpp` or `use_backend(...)`.
"""
from ._registry import BACKENDS, CALL_COUNTS, cpp_available, reset_call_counts, triton_importable, use_backend
from .attention import cu_seqlens_from_lengths, varlen_attention, varlen_attention_ref
from .layer_norm import modulated_layer_norm, modulated_layer_norm_reference
from .pack import (pack_qk_rope, pack_tokens, pack_tokens_reference, packed_layout, rope_inv_freq, unpack_tokens,
                   unpack_tokens_reference)
from .resample import resample_renoise, resample_renoise_packed, resample_renoise_ref, tokens_from_bcthw, transition_tensors

__all__ = [
    "BACKENDS", "CALL_COUNTS", "cpp_available", "reset_call_counts", "triton_importable", "use_backend",
    "varlen_attention", "varlen_attention_ref", "cu_seqlens_from_lengths",
    "pack_tokens", "unpack_tokens", "pack_qk_rope", "pack_tokens_reference", "unpack_tokens_reference", "packed_layout", "rope_inv_freq",
    "resample_renoise", "resample_renoise_packed", "resample_renoise_ref", "tokens_from_bcthw", "transition_tensors",
    "modulated_layer_norm", "modulated_layer_norm_reference",
]
