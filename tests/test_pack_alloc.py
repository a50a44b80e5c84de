"""Fresh outputs of the allocating C++ CPU ops (pack_tokens, unpack_tokens, pack_qk_rope, modulated_layer_norm).

An output of 32 MiB or more gets its own 2 MiB-aligned mapping advised MADV_HUGEPAGE (csrc/cpu_common.cpp), so it
is faulted in per 2 MiB instead of per 4 KiB. Checked here, at sizes just above that threshold:
* the results equal the torch reference (pack / unpack bit for bit) and the out= variant (same kernel);
* the output really is such a mapping (its VMA starts at the data pointer, is exactly the output rounded up to
  2 MiB, and carries the `hg` flag in /proc/self/smaps) where Linux allows THP, and is an ordinary allocation with
  DVG_CPP_HUGEPAGES=0 or below the threshold;
* the mapping lives exactly as long as the tensor's storage (views keep it; it is unmapped after the last one);
* opcheck passes on the op whose output is such a mapping.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dvg_engine.ops import _registry
from dvg_engine.ops import layer_norm as LN
from dvg_engine.ops import pack as P

HUGE_MIN_BYTES = 32 << 20  # kHugeOutputMinBytes in csrc/cpu_common.cpp
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not _registry.cpp_available(), reason="the C++ extension dvg_engine._C is not built")


def _thp_policy() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            line = fh.read()
    except OSError:
        return "unavailable"
    return line[line.index("[") + 1:line.index("]")] if "[" in line else "unavailable"


HUGE_OUTPUTS = sys.platform.startswith("linux") and _thp_policy() in ("always", "madvise") and \
    os.environ.get("DVG_CPP_HUGEPAGES") != "0"
needs_huge = pytest.mark.skipif(not HUGE_OUTPUTS, reason="huge-page outputs need Linux with THP 'always' or "
                                "'madvise' (and DVG_CPP_HUGEPAGES unset)")


def vma_of(address: int):
    """(start, end, VmFlags list) of the mapping of this process that holds `address`, from /proc/self/smaps."""
    with open("/proc/self/smaps") as fh:
        lines = fh.read().splitlines()
    found = None
    for line in lines:
        head = line.split()[0] if line else ""
        if "-" in head and ":" not in head:
            lo, hi = (int(v, 16) for v in head.split("-"))
            found = (lo, hi) if lo <= address < hi else None
        elif found is not None and line.startswith("VmFlags:"):
            return found[0], found[1], line.split()[1:]
    return None


def _huge_mapping(t: torch.Tensor) -> bool:
    """True if t's storage is an output mapping of its own: the VMA starts at the data pointer (2 MiB-aligned), is
    the storage's bytes rounded up to whole 2 MiB pages, and is advised huge pages."""
    ptr, nbytes = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
    start, end, flags = vma_of(ptr)
    huge = 2 << 20
    return start == ptr and ptr % huge == 0 and end - start == -(-nbytes // huge) * huge and "hg" in flags


def _pack_case(features: int, dtype):
    """2-D tokens of an odd width (8194 bytes per fp16 row: the output is not a whole number of pages);
    4200 latent rows, so the pack and unpack outputs pass 32 MiB."""
    gen = torch.Generator().manual_seed(0)
    latent_lens, text_lens, text_len = [2100, 2100], [3, 0], 5
    cu_latent, cu_seqlens, total, _ = P.packed_layout(latent_lens, text_lens)
    latent = torch.randn(sum(latent_lens), features, generator=gen).to(dtype)
    text = torch.randn(len(latent_lens), text_len, features, generator=gen).to(dtype)
    return latent, text, cu_latent, cu_seqlens, total, text_len


def test_pack_unpack_large_outputs_match_reference():
    latent, text, cu_latent, cu_seqlens, total, text_len = _pack_case(4097, torch.float16)
    with _registry.use_backend("cpp"):
        packed = P.pack_tokens(latent, text, cu_latent, cu_seqlens, total)
        lat, txt = P.unpack_tokens(packed, cu_latent, cu_seqlens, latent.shape[0], text_len)
    assert packed.nbytes >= HUGE_MIN_BYTES and lat.nbytes >= HUGE_MIN_BYTES
    assert packed.is_contiguous() and lat.is_contiguous() and txt.is_contiguous()
    assert torch.equal(packed, P.pack_tokens_reference(latent, text, cu_latent, cu_seqlens, total))
    want_lat, want_txt = P.unpack_tokens_reference(packed, cu_latent, cu_seqlens, latent.shape[0], text_len)
    assert torch.equal(lat, want_lat) and torch.equal(lat, latent)
    assert torch.equal(txt, want_txt)
    if HUGE_OUTPUTS:
        assert _huge_mapping(packed) and _huge_mapping(lat)
        assert not _huge_mapping(txt), "a 41 KB output must stay an ordinary allocation"


def test_pack_qk_rope_large_outputs_equal_out_variant():
    gen = torch.Generator().manual_seed(1)
    grids = [(4, 32, 64), (4, 32, 64)]  # 16384 latent tokens x 8 heads x 128 bf16 = 32 MiB per output
    latent_lens = [t * h * w for t, h, w in grids]
    cu_latent, cu_seqlens, total, _ = P.packed_layout(latent_lens, [7, 2])
    q = torch.randn(sum(latent_lens), 8, 128, generator=gen).to(torch.bfloat16)
    k = torch.randn(sum(latent_lens), 8, 128, generator=gen).to(torch.bfloat16)
    text = torch.randn(2, 8, 8, 128, generator=gen).to(torch.bfloat16)
    grid_sizes = torch.tensor(grids, dtype=torch.int32)
    args = (q, k, text, text, cu_latent, cu_seqlens, grid_sizes, total)
    with _registry.use_backend("cpp"):
        q_out, k_out = P.pack_qk_rope(*args)
        q_buf, k_buf = torch.full_like(q_out, float("nan")), torch.full_like(k_out, float("nan"))
        P.pack_qk_rope(*args, q_out=q_buf, k_out=k_buf)
    assert q_out.nbytes >= HUGE_MIN_BYTES
    assert torch.equal(q_out, q_buf) and torch.equal(k_out, k_buf)
    # text rows are copied unchanged; latent rows carry the rotation (checked against the reference elsewhere)
    assert torch.equal(q_out[latent_lens[0]:latent_lens[0] + 7], text[0, :7])
    if HUGE_OUTPUTS:
        assert _huge_mapping(q_out) and _huge_mapping(k_out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_layer_norm_large_output_equals_out_variant(dtype):
    tokens = -(-HUGE_MIN_BYTES // (3072 * torch.finfo(dtype).bits // 8)) + 3
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(tokens, 3072, generator=gen).to(dtype)
    emb = (torch.randn(2, 6 * 3072, generator=gen) * 0.5).to(dtype)
    shift, scale = emb.chunk(6, dim=1)[:2]
    cu = P.packed_layout([tokens // 3, tokens - tokens // 3], [0, 0])[1]
    with _registry.use_backend("cpp"):
        y = LN.modulated_layer_norm(x, cu, scale, shift)
        y_out = LN.modulated_layer_norm(x, cu, scale, shift, out=torch.full_like(x, float("nan")))
    assert y.nbytes >= HUGE_MIN_BYTES and y.is_contiguous()
    assert torch.equal(y, y_out)
    if HUGE_OUTPUTS:
        assert _huge_mapping(y)


@needs_huge
def test_mapping_lives_as_long_as_the_storage():
    latent, text, cu_latent, cu_seqlens, total, _ = _pack_case(4097, torch.float16)
    with _registry.use_backend("cpp"):
        packed = P.pack_tokens(latent, text, cu_latent, cu_seqlens, total)
    ptr = packed.data_ptr()
    span = vma_of(ptr)[:2]
    view = packed[100:110]
    expected = packed[100:110].clone()
    del packed
    gc.collect()
    assert vma_of(ptr)[:2] == span, "the mapping went away while a view still uses it"
    assert torch.equal(view, expected)
    del view
    gc.collect()
    after = vma_of(ptr)
    assert after is None or after[:2] != span or "hg" not in after[2], "the output mapping outlived its tensor"


@needs_huge
def test_opcheck_on_a_huge_page_output():
    latent, text, cu_latent, cu_seqlens, total, _ = _pack_case(4097, torch.float16)
    with _registry.use_backend("cpp"):
        torch.library.opcheck(torch.ops.dvg.pack_tokens.default, (latent, text, cu_latent, cu_seqlens, total),
                              test_utils=("test_schema", "test_faketensor"))


@needs_huge
def test_hugepages_off_by_environment():
    """DVG_CPP_HUGEPAGES=0: every output is an ordinary torch allocation, with the same values."""
    script = textwrap.dedent("""
        import sys, torch
        sys.path.insert(0, "tests")
        import test_pack_alloc as T
        from dvg_engine.ops import _registry, pack as P
        latent, text, cu_latent, cu_seqlens, total, _ = T._pack_case(4097, torch.float16)
        with _registry.use_backend("cpp"):
            packed = P.pack_tokens(latent, text, cu_latent, cu_seqlens, total)
        assert packed.nbytes >= T.HUGE_MIN_BYTES
        assert torch.equal(packed, P.pack_tokens_reference(latent, text, cu_latent, cu_seqlens, total))
        assert not T._huge_mapping(packed), "DVG_CPP_HUGEPAGES=0 still gave the output a huge-page mapping"
        print("OK")
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["DVG_CPP_HUGEPAGES"] = "0"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                            cwd=REPO)
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr
