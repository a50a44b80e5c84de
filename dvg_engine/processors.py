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

Optionally (a layout with `fused_rope`, the engine's `fused_rope` option, off by default) steps 3 and 5
are fused: q and k are packed with RoPE computed from each token's position (`torch.ops.dvg.pack_qk_rope`),
v with `pack_tokens`, and the result scattered back with `unpack_tokens`, instead of applying the
transformer's per-shape cos/sin tables before a row gather.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import torch

from . import _checks



@dataclasses.dataclass
class FusedRope:
    """What `torch.ops.dvg.pack_qk_rope` needs to apply RoPE while packing (instead of the transformer's per-shape
    cos/sin tables applied before): segment s of the stream is [the latent tokens of grid s ; its valid text].

    cu_latent: (S + 1,) int32, latent tokens per segment; cu_text: (S + 1,) int32 when the text arrives as one
    stream of valid tokens (the packed per-sample forward), None when it is padded per batch row (B, L) with
    valid prefixes; grid_sizes: (S, 3) int32 token grid (T, H, W) of each segment, in patches; total /
    total_latent: host ints; rope_axes_dim, theta: the transformer's RoPE configuration; inv_freq: its
    (head_dim / 2,) float32 inverse frequencies (`dvg_engine.ops.pack.rope_inv_freq`), on the device.
    """

    cu_latent: torch.Tensor
    cu_text: Optional[torch.Tensor]
    grid_sizes: torch.Tensor
    total: int
    total_latent: int
    rope_axes_dim: List[int]
    theta: float
    inv_freq: torch.Tensor

    @classmethod
    def build(cls, grids: Sequence[Sequence[int]], text_lengths: Sequence[int], text_stream: bool,
              rope_axes_dim: Sequence[int], theta: float, device) -> "FusedRope":
        """grids: per segment the (T, H, W) token grid; text_lengths: per segment its valid text tokens."""
        from .ops.pack import packed_layout, rope_inv_freq
        latent = [int(t) * int(h) * int(w) for t, h, w in grids]
        cu_latent, cu_seqlens, total, _ = packed_layout(latent, text_lengths, device)
        cu_text = (cu_seqlens - cu_latent) if text_stream else None
        grid_sizes = torch.tensor([list(map(int, g)) for g in grids], dtype=torch.int32).to(device)
        axes = [int(d) for d in rope_axes_dim]
        return cls(cu_latent, cu_text, grid_sizes, total, sum(latent), axes, float(theta),
                   rope_inv_freq(axes, float(theta), device))


@dataclasses.dataclass
class PackedAttention:
    """How to gather the valid rows of a ``(B, N)`` token batch into a varlen stream.

    rows: (total,) int64 indices into the flattened ``B * N`` rows, in packed order (sample by sample,
        each sample's rows contiguous). cu_seqlens: (num_segments + 1,) int32, on the device.
    max_seqlen: host int (from the plan and the text lengths read once at setup, never a device read).
    segment_lengths: host list, for reports and tests.
    dynamic_seq_len: `seq_len` is left to the caller to check (see `for_compile`).
    """

    rows: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    segment_lengths: List[int]
    batch: int
    seq_len: int
    # set: RoPE is applied while packing q/k (`torch.ops.dvg.pack_qk_rope`), not from the rotary tables
    fused_rope: Optional[FusedRope] = None
    dynamic_seq_len: bool = False

    def for_compile(self, max_seqlen: int, dynamic_seq_len: bool = False) -> "PackedAttention":
        """Prepare the layout for attention inside `torch.compile`d code (the engine's `compile_blocks`), so that
        prompts of other valid text lengths (same stage shapes) reuse the graphs instead of compiling new ones
        (with `fused_rope` too: the pack ops take the symbolic token count; call it after `attach_fused_rope`).

        The packed token count (rows' length) depends on the text lengths: it is marked dynamic, so the graphs
        take it as a symbol. max_seqlen: a bound on every segment's length that depends only on the stage
        shapes and the *padded* text length (a host int passed to the attention op is a constant of the graph:
        the exact maximum would specialise it; a larger bound only sizes the Triton grid, whose extra programs
        find no rows and exit). dynamic_seq_len: the token count the layer receives varies with the text
        lengths too (the per-sample packed forward's streams); comparing it with the host int `seq_len` inside
        the compiled code would specialise the graph on it, so the attention skips that check and the caller
        answers for it (the packed forward builds the layout from the very streams it passes)."""
        longest = max(self.segment_lengths)
        if max_seqlen < longest:
            _checks.fail("max_seqlen", max_seqlen, f"an int >= the longest segment ({longest})")
        self.max_seqlen = int(max_seqlen)
        self.dynamic_seq_len = dynamic_seq_len
        from torch._dynamo import maybe_mark_dynamic
        # maybe_mark_dynamic, not mark_dynamic: were a length ever specialised anyway, Dynamo recompiles
        # (the engine's tests count the graphs) instead of failing the user's call
        maybe_mark_dynamic(self.rows, 0)
        return self

    def attach_fused_rope(self, grids: Sequence[Sequence[int]], text_lengths: Sequence[int], text_stream: bool,
                          rope_axes_dim: Sequence[int], theta: float) -> "PackedAttention":
        """Set `fused_rope` (see `FusedRope.build`) after checking, on the host, that its segments are this
        layout's: the fused ops run with validate=False on both, so they must describe the same stream."""
        fused = FusedRope.build(grids, text_lengths, text_stream, rope_axes_dim, theta, self.cu_seqlens.device)
        lengths = [int(t) * int(h) * int(w) + int(n) for (t, h, w), n in zip(grids, text_lengths)]
        if lengths != list(self.segment_lengths):
            raise RuntimeError(f"DVG fused-RoPE segments {lengths} (latent + text tokens) differ from the attention "
                               f"layout's {list(self.segment_lengths)}; the engine's packing plan is inconsistent")
        self.fused_rope = fused
        return self

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
    if batch != layout.batch or (not layout.dynamic_seq_len and seq_len != layout.seq_len):
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


def fused_rope_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, encoder_query: torch.Tensor,
                         encoder_key: torch.Tensor, encoder_value: torch.Tensor,
                         layout: PackedAttention) -> Tuple[torch.Tensor, torch.Tensor]:
    """Attention with RoPE fused into the packing.

    query/key/value: (B, N, heads, head_dim) latent tokens, RoPE not applied; encoder_*: (B, L, heads, head_dim)
    text tokens (valid ones first). Per-group batches (layout.fused_rope.cu_text None): each of the B rows is one
    segment, its text padded. Packed per-sample forward (cu_text set): B = 1 and the rows are the image and text
    streams of all segments. Returns (latent (B, N, heads·head_dim), text (B, L, heads·head_dim)), text rows past
    each segment's valid ones zero (as the unfused path leaves them)."""
    from .ops.pack import pack_qk_rope, pack_tokens, unpack_tokens
    fused = layout.fused_rope
    batch, n_latent, heads, head_dim = query.shape
    text_len = encoder_query.shape[1]
    if batch * n_latent != fused.total_latent:
        raise RuntimeError(f"DVG fused-RoPE layout is for {fused.total_latent} latent tokens but the layer received "
                           f"{batch}x{n_latent}; the engine's packing plan and the model disagree")
    flat = (batch * n_latent, heads, head_dim)

    def text(x):
        return x.reshape(batch * text_len, heads, head_dim) if fused.cu_text is not None else x

    # the packed token count (fused.total) taken from the rows' length instead: the same int eagerly, and under
    # compile_blocks a symbol (`PackedAttention.for_compile`), where the host int would specialise the graph
    total = layout.rows.shape[0]
    # validate=False: the layout was built on the host from the plan (checks would read it back)
    q, k = pack_qk_rope(query.reshape(flat), key.reshape(flat), text(encoder_query), text(encoder_key),
                        fused.cu_latent, layout.cu_seqlens, fused.grid_sizes, total, fused.rope_axes_dim,
                        fused.theta, fused.inv_freq, fused.cu_text, validate=False)
    v = pack_tokens(value.reshape(flat), text(encoder_value), fused.cu_latent, layout.cu_seqlens, total,
                    fused.cu_text, validate=False)
    out = _varlen_attention()(q, k, v, layout.cu_seqlens, layout.cu_seqlens, layout.max_seqlen, layout.max_seqlen,
                              validate=False)
    latent, text_out = unpack_tokens(out, fused.cu_latent, layout.cu_seqlens, fused.total_latent,
                                     batch * text_len if fused.cu_text is not None else text_len, fused.cu_text,
                                     validate=False)
    return (latent.view(batch, n_latent, heads * head_dim).to(query.dtype),
            text_out.view(batch, text_len, heads * head_dim).to(query.dtype))


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

        fused = layout.fused_rope is not None
        if fused and encoder_hidden_states is None:
            raise RuntimeError("DVG fused-RoPE attention needs the text stream (encoder_hidden_states)")
        if fused and single_stream:
            text_len = encoder_hidden_states.shape[1]
            return self._fused(attn, query[:, :-text_len], key[:, :-text_len], value[:, :-text_len],
                               query[:, -text_len:], key[:, -text_len:], value[:, -text_len:], layout)

        # 3. Rotational positional embeddings applied to latent stream (or, fused, while packing in step 5)
        if image_rotary_emb is not None and not fused:
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
            if fused:
                return self._fused(attn, query, key, value, encoder_query, encoder_key, encoder_value, layout)
            query = torch.cat([query, encoder_query], dim=1)
            key = torch.cat([key, encoder_key], dim=1)
            value = torch.cat([value, encoder_value], dim=1)

        if fused:
            raise RuntimeError(f"DVG fused-RoPE attention supports joint attention with a text stream; got {attn!r} "
                               f"with variant {self.variant!r}")

        # 5. Attention: valid rows only, one varlen stream (the text padding / masked tokens are skipped)
        hidden_states = packed_attention(query, key, value, layout).to(query.dtype)

        # 6. Output projection
        if encoder_hidden_states is not None:
            text_len = encoder_hidden_states.shape[1]
            return _output_projection(attn, hidden_states[:, :-text_len], hidden_states[:, -text_len:])
        return hidden_states, encoder_hidden_states

    @staticmethod
    def _fused(attn, query, key, value, encoder_query, encoder_key, encoder_value, layout):
        """Steps 3 and 5 fused (`fused_rope_attention`), then step 6 as in `__call__`."""
        hidden_states, encoder_hidden_states = fused_rope_attention(query, key, value, encoder_query, encoder_key,
                                                                    encoder_value, layout)
        return _output_projection(attn, hidden_states, encoder_hidden_states)


def _output_projection(attn, hidden_states, encoder_hidden_states):
    """Step 6 of the joint attention: the latent and text output projections (where the layer has them)."""
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


# ---------------------------------------------------------------------------------------------------
# Per-sample packed forward (samples with different stage shapes in one varlen stream)
# ---------------------------------------------------------------------------------------------------

def _modulate(norm, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """x: (1, T, D); scale/shift: (S, D), one row per segment; cu_seqlens: (S + 1,) int32 contiguous segments
    -> norm(x)·(1 + scale[seg]) + shift[seg] through `torch.ops.dvg.modulated_layer_norm`.

    The AdaLN modulation of diffusers' blocks, with one (shift, scale) row per sample applied to that sample's
    segment of the packed stream instead of one per batch row. `norm` is the block's own affine-free LayerNorm
    (its eps is used)."""
    from .ops.layer_norm import modulated_layer_norm
    if getattr(norm, "weight", None) is not None or not isinstance(norm, torch.nn.LayerNorm):
        raise NotImplementedError(f"packed modulation expects an affine-free nn.LayerNorm, got {norm!r}")
    # validate=False: cu_seqlens is built on the host from the plan; checking it would read it back
    return modulated_layer_norm(x[0], cu_seqlens, scale, shift, eps=norm.eps, validate=False).unsqueeze(0)


@dataclasses.dataclass
class _Segments:
    ids: torch.Tensor         # (T,) int64 segment of each token
    cu_seqlens: torch.Tensor  # (S + 1,) int32

    @classmethod
    def of_lengths(cls, lengths: Sequence[int], device) -> "_Segments":
        """Contiguous segments of the given host lengths (zeros allowed), built on the host and copied once."""
        counts = torch.tensor(list(lengths), dtype=torch.int64)
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = counts.cumsum(0).to(torch.int32)
        ids = torch.repeat_interleave(torch.arange(len(lengths)), counts)
        return cls(ids.to(device), cu.to(device))


def _with_token_replace(rows: torch.Tensor, token_replace_rows: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, K) per-sample modulation rows -> (2B, K): row 2b is sample b's first-frame (token_replace) row, row
    2b + 1 its own, matching the image segments [frame 0 of b, rest of b]. Unchanged without token_replace."""
    if token_replace_rows is None:
        return rows
    return torch.stack([token_replace_rows, rows], dim=1).flatten(0, 1)


def _text_length_dynamic(block_fn):
    """Wraps a compiled per-block computation ``(block, img, txt, ...)``: the text stream's length (dim 1) is
    marked dynamic on every call, because each block's `txt` is a new tensor (the previous block's output) and
    Dynamo reads the mark from the tensor it compiles against."""
    from torch._dynamo import maybe_mark_dynamic

    def call(block, img, txt, *args):
        maybe_mark_dynamic(txt, 1)
        return block_fn(block, img, txt, *args)

    return call


class PackedHunyuanVideoForward:
    """HunyuanVideoTransformer3DModel's forward over samples of *different* latent shapes, packed.

    Mirrors `HunyuanVideoTransformer3DModel.forward` (numbered like it) with the module's own weights: the
    latent tokens of all samples form one image stream and their valid text tokens one text stream; each
    block's AdaLN modulation is applied per sample segment (`torch.ops.dvg.modulated_layer_norm`); the joint
    attention runs through the DVG processors with a segment layout (one segment = one sample's latent + valid
    text tokens), i.e. one `varlen_attention` call per layer for the whole batch. RoPE tables are the
    transformer's own, per sample shape, cached across steps.

    HunyuanVideo I2V's `token_replace` mode gives each sample's first latent frame the modulation of timestep 0
    (the transformer's `token_replace_emb`, over its `first_frame_num_tokens` = h·w/p² leading image tokens):
    here the image stream is then modulated in two segments per sample, [frame 0, the rest], with that
    sample's token_replace rows and its own rows (the text stream keeps one segment per sample, as there).
    """

    def __init__(self, transformer, state: DVGAttentionState, fused_rope: bool = False,
                 compile_kwargs: Optional[dict] = None) -> None:
        self.transformer = transformer
        self.state = state
        self.fused_rope = fused_rope  # RoPE applied while packing (`FusedRope`) instead of from the tables
        self.rope_cache: dict = {}
        self.layout_cache: dict = {}
        # compile_kwargs (the engine's `compile_blocks`, resolved): the per-block computations run through
        # torch.compile with dynamic=False. Dynamo keys its graphs on the code object of `_dual_block` /
        # `_single_block` and guards on the shapes and strides of the packed streams and on the block's module
        # structure (the same for every block of a class, so the blocks share graphs). The image stream is fixed
        # by the stage shapes; the text stream's length (the samples' valid text tokens) is marked dynamic, as
        # are the text segment ids and the attention rows that follow it (`PackedAttention.for_compile`): one
        # graph set per stage shapes, none per step and none per new set of prompt lengths. The compiled
        # callables belong to this object, which lives for one DVG call, so nothing stays compiled outside it.
        self.compiling = compile_kwargs is not None
        self.dual_block = self._dual_block
        self.single_block = self._single_block
        if self.compiling:
            self.dual_block = _text_length_dynamic(torch.compile(self._dual_block, dynamic=False, **compile_kwargs))
            self.single_block = _text_length_dynamic(
                torch.compile(self._single_block, dynamic=False, **compile_kwargs))

    def _rope(self, hidden: torch.Tensor):
        key = (tuple(hidden.shape[2:]), hidden.device, hidden.dtype)
        if key not in self.rope_cache:
            self.rope_cache[key] = self.transformer.rope(hidden[:1])
        return self.rope_cache[key]

    # ---- model-specific: embeddings (steps 1-2 of the transformer's forward) ----
    def _embed(self, hidden_list, timestep, text_lengths, kwargs):
        """-> (temb (B, D), token_replace_emb (B, D) or None, per-sample image tokens (1, N_b, D), per-sample
        valid text tokens (1, L_b, D))."""
        tr = self.transformer
        temb, token_replace_emb = tr.time_text_embed(timestep, kwargs["pooled_projections"], kwargs.get("guidance"))
        image_tokens = [tr.x_embedder(h) for h in hidden_list]
        text = tr.context_embedder(kwargs["encoder_hidden_states"], timestep, kwargs["encoder_attention_mask"])
        return temb, token_replace_emb, image_tokens, [text[b:b + 1, :int(n)] for b, n in enumerate(text_lengths)]

    @staticmethod
    def _text_capacity(kwargs) -> int:
        """The padded text length of the conditioning: a bound on any sample's valid text tokens that does not
        depend on the prompts' valid lengths."""
        return kwargs["encoder_hidden_states"].shape[1]

    def _blocks(self, img, txt, temb, tr_emb, rope, seg_img, seg_txt):
        tr = self.transformer
        for block in tr.transformer_blocks:
            img, txt = self.dual_block(block, img, txt, temb, tr_emb, rope, seg_img, seg_txt)
        for block in tr.single_transformer_blocks:
            img, txt = self.single_block(block, img, txt, temb, tr_emb, rope, seg_img, seg_txt)
        return img, txt

    def __call__(self, hidden_list: Sequence[torch.Tensor], timestep: torch.Tensor, text_lengths: Sequence[int],
                 **kwargs) -> List[torch.Tensor]:
        """hidden_list: per sample (1, C, T_b, H_b, W_b); timestep: (B,); text_lengths: per sample the number of
        valid (prefix) text tokens, host ints; kwargs: the transformer's conditioning arguments for the B samples
        (batch-first, text padded to one length). Returns per sample the velocity (1, C_out, T_b, H_b, W_b)."""
        tr = self.transformer
        p, p_t = tr.config.patch_size, tr.config.patch_size_t
        device = hidden_list[0].device

        # 1. conditional embeddings, patch embedding, text (RoPE: per layout, below)
        temb, tr_emb, image_tokens, texts = self._embed(hidden_list, timestep, text_lengths, kwargs)

        # 3. Packing: image stream [1, Ti, D], text stream [1, Tt, D], segments, and the attention layout
        lengths_img = [t.shape[1] for t in image_tokens]
        lengths_txt = [t.shape[1] for t in texts]
        # token_replace: the transformer's first_frame_num_tokens, per sample
        first_frame = [(h.shape[3] // p) * (h.shape[4] // p) for h in hidden_list] if tr_emb is not None else None
        img = torch.cat(image_tokens, dim=1)
        txt = torch.cat(texts, dim=1)
        key = (tuple(tuple(h.shape[2:]) for h in hidden_list), tuple(lengths_txt), device)
        cached = self.layout_cache.get(key)
        if cached is None:
            total_img = sum(lengths_img)
            rows, off_i, off_t = [], 0, 0
            for n_i, n_t in zip(lengths_img, lengths_txt):
                rows.append(torch.cat([torch.arange(off_i, off_i + n_i), total_img + torch.arange(off_t, off_t + n_t)]))
                off_i += n_i
                off_t += n_t
            layout = PackedAttention.segments(rows, total_img + sum(lengths_txt), device)
            if self.fused_rope:
                cfg = tr.config
                grids = [(h.shape[2] // p_t, h.shape[3] // p, h.shape[4] // p) for h in hidden_list]
                layout.attach_fused_rope(grids, lengths_txt, True, cfg.rope_axes_dim, cfg.rope_theta)
            if self.compiling:
                # the bound depends on the stage shapes and the padded text length only; the layers' token count
                # follows the text lengths, and the layout is built from these very streams
                layout.for_compile(max(lengths_img) + self._text_capacity(kwargs), dynamic_seq_len=True)
            seg_img = _Segments.of_lengths(lengths_img, device)
            if first_frame is not None:
                # the blocks' image modulation segments: [frame 0 of b, rest of b] per sample
                seg_img_blocks = _Segments.of_lengths([n for f, n_i in zip(first_frame, lengths_img)
                                                       for n in (f, n_i - f)], device)
            else:
                seg_img_blocks = seg_img
            # 2. RoPE: the samples' tables (per grid, cached) concatenated in stream order, once per layout
            rope = None
            if not self.fused_rope:
                ropes = [self._rope(h) for h in hidden_list]
                rope = tuple(torch.cat([r[i] for r in ropes], dim=0) for i in (0, 1))
            seg_txt = _Segments.of_lengths(lengths_txt, device)
            if self.compiling:
                from torch._dynamo import maybe_mark_dynamic
                maybe_mark_dynamic(seg_txt.ids, 0)
            cached = (seg_img, seg_img_blocks, seg_txt, layout, rope)
            self.layout_cache[key] = cached
        seg_img, seg_img_blocks, seg_txt, layout, rope = cached
        # Host-side (shapes only, no device read): the layers' own token-count check is skipped under compile_blocks
        # (`PackedAttention.for_compile`), so the streams they will receive are checked against the layout here.
        if img.shape[:2] != (1, layout.seq_len - txt.shape[1]) or txt.shape[0] != 1:
            raise RuntimeError(f"DVG packed forward: image stream {tuple(img.shape[:2])} and text stream "
                               f"{tuple(txt.shape[:2])} do not make the layout's {layout.seq_len} tokens")

        # 4. Transformer blocks
        with self.state.activate(layout):
            img, txt = self._blocks(img, txt, temb, tr_emb, rope, seg_img_blocks, seg_txt)

        # 5. Output projection, per-sample unpatchify
        emb = tr.norm_out.linear(tr.norm_out.silu(temb).to(img.dtype))
        scale, shift = torch.chunk(emb, 2, dim=1)
        img = _modulate(tr.norm_out.norm, img, scale, shift, seg_img.cu_seqlens)
        img = tr.proj_out(img)
        outputs, offset = [], 0
        for hidden, n in zip(hidden_list, lengths_img):
            _, _, frames, height, width = hidden.shape
            piece = img[:, offset:offset + n].reshape(1, frames // p_t, height // p, width // p, -1, p_t, p, p)
            piece = piece.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)
            outputs.append(piece)
            offset += n
        return outputs

    @staticmethod
    def _dual_block(block, img, txt, temb, tr_emb, rope, seg_img, seg_txt):
        """seg_img: the image modulation segments, one per sample, or two (frame 0, rest) with tr_emb."""
        # 1. Input normalization (per-sample AdaLN rows gathered per token)
        rows = block.norm1.linear(block.norm1.silu(temb))
        tr_rows = block.norm1.linear(block.norm1.silu(tr_emb)) if tr_emb is not None else None
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = _with_token_replace(rows, tr_rows).chunk(
            6, dim=1)
        c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context.linear(
            block.norm1_context.silu(temb)).chunk(6, dim=1)
        norm_img = _modulate(block.norm1.norm, img, scale_msa, shift_msa, seg_img.cu_seqlens)
        norm_txt = _modulate(block.norm1_context.norm, txt, c_scale_msa, c_shift_msa, seg_txt.cu_seqlens)

        # 2. Joint attention
        attn_img, attn_txt = block.attn(hidden_states=norm_img, encoder_hidden_states=norm_txt, attention_mask=None,
                                        image_rotary_emb=rope)

        # 3. Modulation and residual connection
        img = img + attn_img * gate_msa.index_select(0, seg_img.ids)
        txt = txt + attn_txt * c_gate_msa.index_select(0, seg_txt.ids)
        norm_img = _modulate(block.norm2, img, scale_mlp, shift_mlp, seg_img.cu_seqlens)
        norm_txt = _modulate(block.norm2_context, txt, c_scale_mlp, c_shift_mlp, seg_txt.cu_seqlens)

        # 4. Feed-forward
        img = img + gate_mlp.index_select(0, seg_img.ids) * block.ff(norm_img)
        txt = txt + c_gate_mlp.index_select(0, seg_txt.ids) * block.ff_context(norm_txt)
        return img, txt

    @staticmethod
    def _single_block(block, img, txt, temb, tr_emb, rope, seg_img, seg_txt):
        """seg_img: the image modulation segments, one per sample, or two (frame 0, rest) with tr_emb."""
        text_len = txt.shape[1]
        hidden = torch.cat([img, txt], dim=1)
        residual = hidden

        # 1. Input normalization (the image and text parts are each contiguous per sample; with token_replace
        # only the image part has frame-0 rows, the text follows the sample's own)
        rows = block.norm.linear(block.norm.silu(temb))
        shift, scale, gate = rows.chunk(3, dim=1)
        if tr_emb is not None:
            img_shift, img_scale, img_gate = _with_token_replace(
                rows, block.norm.linear(block.norm.silu(tr_emb))).chunk(3, dim=1)
        else:
            img_shift, img_scale, img_gate = shift, scale, gate
        norm_hidden = torch.cat([_modulate(block.norm.norm, img, img_scale, img_shift, seg_img.cu_seqlens),
                                 _modulate(block.norm.norm, txt, scale, shift, seg_txt.cu_seqlens)], dim=1)
        mlp_hidden = block.act_mlp(block.proj_mlp(norm_hidden))

        # 2. Attention
        attn_img, attn_txt = block.attn(hidden_states=norm_hidden[:, :-text_len],
                                        encoder_hidden_states=norm_hidden[:, -text_len:], attention_mask=None,
                                        image_rotary_emb=rope)
        attn_out = torch.cat([attn_img, attn_txt], dim=1)

        # 3. Modulation and residual connection
        hidden = torch.cat([attn_out, mlp_hidden], dim=2)
        gate_rows = torch.cat([img_gate.index_select(0, seg_img.ids), gate.index_select(0, seg_txt.ids)], dim=0)
        hidden = gate_rows * block.proj_out(hidden) + residual
        # sliced from the (T, D) row, not the (1, T, D) tensor: the image part's batch stride is then its own
        # length times D, not the stream's (which follows the text lengths), so the next block's graph does not
        # specialise on the text lengths through a stride (Dynamo guards the strides of size-1 dims too)
        return hidden[0, :-text_len].unsqueeze(0), hidden[0, -text_len:].unsqueeze(0)


class PackedHunyuanVideo15Forward(PackedHunyuanVideoForward):
    """HunyuanVideo15Transformer3DModel's forward over samples of different latent shapes, packed.

    Steps 1-2 mirror `HunyuanVideo15Transformer3DModel.forward`: the time embedding, the Qwen text refiner,
    the ByT5 projection and the image projection, each plus its `cond_type_embed`; each sample's text part is
    then its valid tokens in the transformer's own order (valid image tokens — I2V only —, valid ByT5, valid
    MLLM), which is what that forward's reordering puts first, and the padding it puts last is never packed.
    The dual-stream blocks are the same as HunyuanVideo's.

    kwargs additionally need `text_parts`: per sample (image_valid, byt5_valid, mllm_valid) host ints.
    """

    def _embed(self, hidden_list, timestep, text_lengths, kwargs):
        tr = self.transformer
        temb = tr.time_embed(timestep, timestep_r=kwargs.get("timestep_r"))
        image_tokens = [tr.x_embedder(h) for h in hidden_list]
        text = tr.context_embedder(kwargs["encoder_hidden_states"], timestep, kwargs["encoder_attention_mask"])
        text = text + tr.cond_type_embed(torch.zeros_like(text[:, :, 0], dtype=torch.long))
        text_2 = tr.context_embedder_2(kwargs["encoder_hidden_states_2"])
        text_2 = text_2 + tr.cond_type_embed(torch.ones_like(text_2[:, :, 0], dtype=torch.long))
        image = tr.image_embedder(kwargs["image_embeds"])
        image = image + tr.cond_type_embed(2 * torch.ones_like(image[:, :, 0], dtype=torch.long))
        texts = []
        for b, (n_image, n_byt5, n_mllm) in enumerate(kwargs["text_parts"]):
            if n_image + n_byt5 + n_mllm != int(text_lengths[b]):
                raise RuntimeError(f"text_parts[{b}]={kwargs['text_parts'][b]} does not add up to text_lengths[{b}]="
                                   f"{text_lengths[b]}")
            texts.append(torch.cat([image[b:b + 1, :n_image], text_2[b:b + 1, :n_byt5], text[b:b + 1, :n_mllm]], dim=1))
        return temb, None, image_tokens, texts

    @staticmethod
    def _text_capacity(kwargs) -> int:
        return sum(kwargs[name].shape[1] for name in ("encoder_hidden_states", "encoder_hidden_states_2",
                                                      "image_embeds"))

    def _blocks(self, img, txt, temb, tr_emb, rope, seg_img, seg_txt):
        for block in self.transformer.transformer_blocks:
            img, txt = self.dual_block(block, img, txt, temb, tr_emb, rope, seg_img, seg_txt)
        return img, txt
