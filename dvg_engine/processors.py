"""Packed variable-length attention processors for the HunyuanVideo and HunyuanVideo-1.5 transformers.

The engine installs one `DVGAttnProcessor` per joint-attention layer with
`transformer.set_attn_processor({...})` (the token refiner keeps its own processor). Each one wraps the
processor it replaces:

* **Outside a DVG call** (no `PackedAttention` layout is active on the shared `DVGAttentionState`) it
  calls the wrapped original, so a transformer shared with another pipeline (`from_pipe`) behaves
  exactly as before — bit for bit.
* **Inside a DVG call** it runs the steps of diffusers' `HunyuanVideoAttnProcessor2_0` /
  `HunyuanVideo15AttnProcessor2_0` unchanged (numbered identically, so the two can be diffed), except
  step 5: instead of a dense masked SDPA over ``(B, N)`` padded rows, the valid rows of every sample
  (latent tokens + valid text tokens; HunyuanVideo's text padding and HunyuanVideo-1.5's masked
  image/text tokens are skipped) are gathered into one packed ``(total, heads, head_dim)`` stream with
  int32 ``cu_seqlens`` and run through ``torch.ops.dvg.varlen_attention``. Skipped rows come back as
  zeros (they never reach a latent token: they are masked as keys in the original too).

The same processor serves the engine's per-sample packed forward (samples with different stage
shapes in one stream): there the "batch" is a single row of already-packed tokens and the layout's
row index is a permutation that makes each sample's [latent, text] tokens contiguous.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import torch

from . import _checks


@dataclasses.dataclass
class PackedAttention:
    """How to gather the valid rows of a ``(B, N)`` token batch into a varlen stream.

    rows: (total,) int64 indices into the flattened ``B * N`` rows, in packed order (sample by sample,
        each sample's rows contiguous). cu_seqlens: (num_segments + 1,) int32, on the device.
    max_seqlen: host int (from the plan and the text lengths read once at setup, never a device read).
    segment_lengths: host list, for reports and tests.
    """

    rows: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    segment_lengths: List[int]
    batch: int
    seq_len: int

    @classmethod
    def prefix(cls, valid_lengths: Sequence[int], seq_len: int, device) -> "PackedAttention":
        """Layout for a padded batch whose sample b has its valid rows at positions [0, valid_lengths[b])."""
        lengths = [int(n) for n in valid_lengths]
        for b, n in enumerate(lengths):
            if not 0 < n <= seq_len:
                _checks.fail(f"valid_lengths[{b}]", n, f"an integer in [1, {seq_len}] (the padded sequence length)")
        rows = torch.cat([torch.arange(n, dtype=torch.int64) + b * seq_len for b, n in enumerate(lengths)])
        return cls._build(rows, lengths, len(lengths), seq_len, device)

    @classmethod
    def segments(cls, segment_rows: Sequence[torch.Tensor], seq_len: int, device) -> "PackedAttention":
        """Layout for one packed row of ``seq_len`` tokens: segment s gathers the given row indices."""
        lengths = [int(r.numel()) for r in segment_rows]
        rows = torch.cat([r.to(torch.int64).cpu() for r in segment_rows])
        return cls._build(rows, lengths, 1, seq_len, device)

    @classmethod
    def _build(cls, rows, lengths, batch, seq_len, device) -> "PackedAttention":
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0).to(torch.int32)
        return cls(rows=rows.to(device), cu_seqlens=cu.to(device), max_seqlen=max(lengths),
                   segment_lengths=lengths, batch=batch, seq_len=seq_len)


class DVGAttentionState:
    """Shared by all DVG processors of one transformer; the engine sets `layout` around each forward.

    `layout is None` means "not inside a DVG call": every processor defers to the original.
    """

    def __init__(self) -> None:
        self.layout: Optional[PackedAttention] = None
        self.calls = 0  # packed attention calls, for tests and reports

    def activate(self, layout: Optional[PackedAttention]):
        return _Activate(self, layout)


class _Activate:
    def __init__(self, state: DVGAttentionState, layout: Optional[PackedAttention]):
        self.state, self.layout, self.previous = state, layout, None

    def __enter__(self):
        self.previous, self.state.layout = self.state.layout, self.layout
        return self.layout

    def __exit__(self, *exc):
        self.state.layout = self.previous
        return False


def _varlen_attention():
    from .ops.attention import varlen_attention  # registers torch.ops.dvg.varlen_attention on import
    return varlen_attention


def packed_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     layout: PackedAttention) -> torch.Tensor:
    """query/key/value: (B, N, heads, head_dim) -> (B, N, heads * head_dim); rows outside the layout are 0."""
    batch, seq_len, heads, head_dim = query.shape
    if (batch, seq_len) != (layout.batch, layout.seq_len):
        raise RuntimeError(f"DVG attention layout is for (batch, tokens)=({layout.batch}, {layout.seq_len}) but the "
                           f"layer received {(batch, seq_len)}; the engine's packing plan and the model disagree")
    flat = (batch * seq_len, heads, head_dim)
    q = query.reshape(flat).index_select(0, layout.rows)
    k = key.reshape(flat).index_select(0, layout.rows)
    v = value.reshape(flat).index_select(0, layout.rows)
    # validate=False: the layout was built on the host from the plan, so the op's content checks (a device
    # read each) would only re-check our own arithmetic.
    out = _varlen_attention()(q, k, v, layout.cu_seqlens, layout.cu_seqlens, layout.max_seqlen, layout.max_seqlen,
                              validate=False)
    full = out.new_zeros(flat)
    full.index_copy_(0, layout.rows, out)
    return full.view(batch, seq_len, heads * head_dim)


class DVGAttnProcessor:
    """Joint attention of HunyuanVideo (``variant="hunyuan_video"``) or HunyuanVideo-1.5
    (``variant="hunyuan_video_1_5"``) through the packed varlen path; defers to `original` outside DVG."""

    def __init__(self, original, state: DVGAttentionState, variant: str) -> None:
        _checks.check_choice("variant", variant, ("hunyuan_video", "hunyuan_video_1_5"))
        self.original = original
        self.state = state
        self.variant = variant

    # `image_rotary_emb` is named explicitly: diffusers drops keyword arguments a processor's __call__
    # does not name, so a `**kwargs` signature would silently lose the RoPE tables.
    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None,
                 image_rotary_emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        layout = self.state.layout
        if layout is None:
            return self.original(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=attention_mask, image_rotary_emb=image_rotary_emb)
        from diffusers.models.embeddings import apply_rotary_emb

        single_stream = self.variant == "hunyuan_video" and attn.add_q_proj is None
        if single_stream and encoder_hidden_states is not None:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)

        # 1. QKV projections
        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))

        # 2. QK normalization
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # 3. Rotational positional embeddings applied to latent stream
        if image_rotary_emb is not None:
            if single_stream and encoder_hidden_states is not None:
                text_len = encoder_hidden_states.shape[1]
                query = torch.cat([apply_rotary_emb(query[:, :-text_len], image_rotary_emb, sequence_dim=1),
                                   query[:, -text_len:]], dim=1)
                key = torch.cat([apply_rotary_emb(key[:, :-text_len], image_rotary_emb, sequence_dim=1),
                                 key[:, -text_len:]], dim=1)
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        # 4. Encoder condition QKV projection and normalization
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            encoder_query = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            encoder_key = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            encoder_value = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            if attn.norm_added_q is not None:
                encoder_query = attn.norm_added_q(encoder_query)
            if attn.norm_added_k is not None:
                encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([query, encoder_query], dim=1)
            key = torch.cat([key, encoder_key], dim=1)
            value = torch.cat([value, encoder_value], dim=1)

        # 5. Attention: valid rows only, one varlen stream (the text padding / masked tokens are skipped)
        hidden_states = packed_attention(query, key, value, layout).to(query.dtype)

        # 6. Output projection
        if encoder_hidden_states is not None:
            text_len = encoder_hidden_states.shape[1]
            hidden_states, encoder_hidden_states = hidden_states[:, :-text_len], hidden_states[:, -text_len:]
            if getattr(attn, "to_out", None) is not None:
                hidden_states = attn.to_out[0](hidden_states)
                hidden_states = attn.to_out[1](hidden_states)
            if getattr(attn, "to_add_out", None) is not None:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


def joint_attention_names(transformer) -> List[str]:
    """Processor names of the joint-attention layers (the token refiner's are excluded)."""
    return [name for name in transformer.attn_processors if not name.startswith("context_embedder.")]


def install(transformer, variant: str) -> DVGAttentionState:
    """Install DVG processors on `transformer` (per instance), wrapping the current ones. Idempotent:
    when DVG processors are already installed, their shared state is returned unchanged."""
    current = transformer.attn_processors
    names = joint_attention_names(transformer)
    if not names:
        raise ValueError(f"transformer {type(transformer).__name__} has no joint-attention layers to accelerate")
    existing = [current[n] for n in names if isinstance(current[n], DVGAttnProcessor)]
    if existing:
        if len(existing) != len(names):
            raise RuntimeError("the transformer has a mix of DVG and other attention processors; call "
                               "pipe.dvg.restore() (or set_attn_processor) before compiling again")
        return existing[0].state
    state = DVGAttentionState()
    mapping = dict(current)
    for name in names:
        mapping[name] = DVGAttnProcessor(current[name], state, variant)
    transformer.set_attn_processor(mapping)
    return state


def uninstall(transformer) -> bool:
    """Put the wrapped original processors back (the very same objects). Returns whether anything changed."""
    current = transformer.attn_processors
    if not any(isinstance(p, DVGAttnProcessor) for p in current.values()):
        return False
    mapping = {name: (p.original if isinstance(p, DVGAttnProcessor) else p) for name, p in current.items()}
    transformer.set_attn_processor(mapping)
    return True
