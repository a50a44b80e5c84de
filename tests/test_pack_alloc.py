"""Fresh outputs of the allocating C++ CPU ops (pack_tokens, unpack_tokens, pack_qk_rope, modulated_layer_norm).

For an output of 32 MiB or more (csrc/cpu_common.cpp) the op keeps at::empty's memory when it is already faulted
in (glibc recycled it), and otherwise gives the output its own 2 MiB-aligned mapping advised MADV_HUGEPAGE, so it
is faulted in per 2 MiB instead of per 4 KiB (DVG_CPP_HUGEPAGES: unset = that choice, 1 = always the mapping,
0 = never). Checked here, at sizes just above that threshold:
* the results equal the torch reference (pack / unpack bit for bit) and the out= variant (same kernel), whichever
  memory the output got;
* an own mapping is exactly that (its VMA starts at the data pointer, is the output rounded up to 2 MiB, and
  carries the `hg` flag in /proc/self/smaps); every op gets one with DVG_CPP_HUGEPAGES=1 and none with 0; in the
  automatic mode a fresh output gets one and recycled heap memory (glibc forced to keep it with mallopt) is kept;
* the mapping lives exactly as long as the tensor's storage (views keep it; it is unmapped after the last one);
* opcheck passes on an op whose output is such a mapping.
The mapping checks run in subprocesses: the mode is read once per process, and the automatic choice depends on
the state of the process's heap.
"""
from __future__ import annotations

import sys

import pytest
import torch

from dvg_engine.ops import _registry
from dvg_engine.ops import layer_norm as LN
from dvg_engine.ops import pack as P
from _backends import run_python

HUGE_MIN_BYTES = 32 << 20  # kHugeOutputMinBytes in csrc/cpu_common.cpp

pytestmark = pytest.mark.skipif(not _registry.cpp_available(), reason="the C++ extension dvg_engine._C is not built")


def _thp_policy() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            line = fh.read()
    except OSError:
        return "unavailable"
    return line[line.index("[") + 1:line.index("]")] if "[" in line else "unavailable"


THP_USABLE = sys.platform.startswith("linux") and _thp_policy() in ("always", "madvise")
needs_thp = pytest.mark.skipif(not THP_USABLE, reason="huge-page outputs need Linux with THP 'always' or 'madvise'")


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


def own_mapping(t: torch.Tensor) -> bool:
    """Whether t's storage is a mapping of its own (its VMA starts at the data pointer; torch's allocator never
    returns the start of a mapping: glibc puts its chunk header there)."""
    ptr = t.untyped_storage().data_ptr()
    return vma_of(ptr)[0] == ptr


def assert_huge_mapping_if_own(t: torch.Tensor) -> None:
    """An own output mapping must be 2 MiB-aligned, the storage's bytes rounded up to whole 2 MiB pages, and advised
    huge pages."""
    if not own_mapping(t):
        return
    ptr, nbytes = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
    start, end, flags = vma_of(ptr)
    huge = 2 << 20
    assert ptr % huge == 0 and end - start == -(-nbytes // huge) * huge, (hex(ptr), end - start, nbytes)
    assert "hg" in flags, f"the output mapping is not advised huge pages: {flags}"


def _pack_case(features: int, dtype):
    """2-D tokens of an odd width (8194 bytes per fp16 row: the output is not a whole number of pages);
    4200 latent rows, so the pack and unpack outputs pass 32 MiB."""
    gen = torch.Generator().manual_seed(0)
    latent_lens, text_lens, text_len = [2100, 2100], [3, 0], 5
    cu_latent, cu_seqlens, total, _ = P.packed_layout(latent_lens, text_lens)
    latent = torch.randn(sum(latent_lens), features, generator=gen).to(dtype)
    text = torch.randn(len(latent_lens), text_len, features, generator=gen).to(dtype)
    return latent, text, cu_latent, cu_seqlens, total, text_len


def _rope_case():
    gen = torch.Generator().manual_seed(1)
    grids = [(4, 32, 64), (4, 32, 64)]  # 16384 latent tokens x 8 heads x 128 bf16 = 32 MiB per output
    latent_lens = [t * h * w for t, h, w in grids]
    cu_latent, cu_seqlens, total, _ = P.packed_layout(latent_lens, [7, 2])
    q = torch.randn(sum(latent_lens), 8, 128, generator=gen).to(torch.bfloat16)
    k = torch.randn(sum(latent_lens), 8, 128, generator=gen).to(torch.bfloat16)
    text = torch.randn(2, 8, 8, 128, generator=gen).to(torch.bfloat16)
    return (q, k, text, text, cu_latent, cu_seqlens, torch.tensor(grids, dtype=torch.int32), total), latent_lens[0]


def _ln_case(dtype):
    tokens = -(-HUGE_MIN_BYTES // (3072 * torch.finfo(dtype).bits // 8)) + 3
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(tokens, 3072, generator=gen).to(dtype)
    emb = (torch.randn(2, 6 * 3072, generator=gen) * 0.5).to(dtype)
    shift, scale = emb.chunk(6, dim=1)[:2]
    cu = P.packed_layout([tokens // 3, tokens - tokens // 3], [0, 0])[1]
    return x, cu, scale, shift


def all_large_outputs():
    """(name, output) of every allocating C++ op at a size past the threshold (small text output of unpack too)."""
    latent, text, cu_latent, cu_seqlens, total, text_len = _pack_case(4097, torch.float16)
    with _registry.use_backend("cpp"):
        packed = P.pack_tokens(latent, text, cu_latent, cu_seqlens, total)
        lat, txt = P.unpack_tokens(packed, cu_latent, cu_seqlens, latent.shape[0], text_len)
        q, k = P.pack_qk_rope(*_rope_case()[0])
        y = LN.modulated_layer_norm(*_ln_case(torch.float32))
    return [("pack", packed), ("unpack latent", lat), ("rope q", q), ("rope k", k), ("layer norm", y)], txt


def run_script(script: str, hugepages: str = None) -> None:
    env = {} if hugepages is None else {"DVG_CPP_HUGEPAGES": hugepages}
    run_python(script, unset=("TRITON_INTERPRET", "DVG_CPP_HUGEPAGES"), **env)


# ----------------------------------------------------------------------------------------------------
# Values, whichever memory the output got (this process's mode and heap state)
# ----------------------------------------------------------------------------------------------------

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
    if sys.platform.startswith("linux"):
        for t in (packed, lat):
            assert_huge_mapping_if_own(t)
        assert not own_mapping(txt), "a 41 KB output must stay an ordinary allocation"


def test_pack_qk_rope_large_outputs_equal_out_variant():
    args, first_latent = _rope_case()
    with _registry.use_backend("cpp"):
        q_out, k_out = P.pack_qk_rope(*args)
        q_buf, k_buf = torch.full_like(q_out, float("nan")), torch.full_like(k_out, float("nan"))
        P.pack_qk_rope(*args, q_out=q_buf, k_out=k_buf)
    assert q_out.nbytes >= HUGE_MIN_BYTES
    assert torch.equal(q_out, q_buf) and torch.equal(k_out, k_buf)
    # text rows are copied unchanged; latent rows carry the rotation (checked against the reference elsewhere)
    assert torch.equal(q_out[first_latent:first_latent + 7], args[2][0, :7])
    if sys.platform.startswith("linux"):
        assert_huge_mapping_if_own(q_out)
        assert_huge_mapping_if_own(k_out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_layer_norm_large_output_equals_out_variant(dtype):
    x, cu, scale, shift = _ln_case(dtype)
    with _registry.use_backend("cpp"):
        y = LN.modulated_layer_norm(x, cu, scale, shift)
        y_out = LN.modulated_layer_norm(x, cu, scale, shift, out=torch.full_like(x, float("nan")))
    assert y.nbytes >= HUGE_MIN_BYTES and y.is_contiguous()
    assert torch.equal(y, y_out)
    if sys.platform.startswith("linux"):
        assert_huge_mapping_if_own(y)


# ----------------------------------------------------------------------------------------------------
# Which memory: per mode, in subprocesses
# ----------------------------------------------------------------------------------------------------

@needs_thp
def test_always_mode_gives_every_large_output_a_huge_page_mapping():
    run_script("""
        import torch
        import test_pack_alloc as T
        outputs, small = T.all_large_outputs()
        for name, t in outputs:
            assert T.own_mapping(t), f"{name}: no mapping of its own with DVG_CPP_HUGEPAGES=1"
            T.assert_huge_mapping_if_own(t)
        assert not T.own_mapping(small)
        print("OK")
    """, hugepages="1")


@needs_thp
def test_mapping_lives_as_long_as_the_storage():
    run_script("""
        import gc, torch
        import test_pack_alloc as T
        from dvg_engine.ops import _registry, pack as P
        latent, text, cu_latent, cu_seqlens, total, _ = T._pack_case(4097, torch.float16)
        with _registry.use_backend("cpp"):
            packed = P.pack_tokens(latent, text, cu_latent, cu_seqlens, total)
        ptr = packed.data_ptr()
        span = T.vma_of(ptr)[:2]
        assert T.own_mapping(packed)
        view = packed[100:110]
        expected = packed[100:110].clone()
        del packed
        gc.collect()
        assert T.vma_of(ptr)[:2] == span, "the mapping went away while a view still uses it"
        assert torch.equal(view, expected)
        del view
        gc.collect()
        after = T.vma_of(ptr)
        assert after is None or after[:2] != span or "hg" not in after[2], "the output mapping outlived its tensor"
        print("OK")
    """, hugepages="1")


@needs_thp
def test_opcheck_on_a_huge_page_output():
    run_script("""
        import torch
        import test_pack_alloc as T
        from dvg_engine.ops import _registry
        latent, text, cu_latent, cu_seqlens, total, _ = T._pack_case(4097, torch.float16)
        with _registry.use_backend("cpp"):
            torch.library.opcheck(torch.ops.dvg.pack_tokens.default, (latent, text, cu_latent, cu_seqlens, total),
                                  test_utils=("test_schema", "test_faketensor"))
            assert T.own_mapping(torch.ops.dvg.pack_tokens(latent, text, cu_latent, cu_seqlens, total))
        print("OK")
    """, hugepages="1")


def test_off_mode_keeps_torch_allocations():
    run_script("""
        import torch
        import test_pack_alloc as T
        from dvg_engine.ops import pack as P
        outputs, _ = T.all_large_outputs()
        for name, t in outputs:
            assert not T.own_mapping(t), f"{name}: DVG_CPP_HUGEPAGES=0 still gave the output a mapping of its own"
        latent, text, cu_latent, cu_seqlens, total, _ = T._pack_case(4097, torch.float16)
        assert torch.equal(outputs[0][1], P.pack_tokens_reference(latent, text, cu_latent, cu_seqlens, total))
        print("OK")
    """, hugepages="0")


@needs_thp
@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(__import__("ctypes").CDLL(None), "mallopt"),
                    reason="needs glibc's mallopt to make the heap keep freed memory")
def test_auto_mode_maps_fresh_outputs_and_keeps_recycled_memory():
    """A fresh output gets the huge-page mapping; memory glibc hands back already faulted in is kept (no fresh
    mapping could be faster). glibc is made to serve large requests from its heap and keep freed memory there
    (mallopt: no mmap, no trimming), so the second case is deterministic."""
    run_script("""
        import ctypes, torch
        import test_pack_alloc as T
        from dvg_engine.ops import _registry, pack as P
        latent, text, cu_latent, cu_seqlens, total, _ = T._pack_case(4097, torch.float16)
        want = P.pack_tokens_reference(latent, text, cu_latent, cu_seqlens, total)
        with _registry.use_backend("cpp"):
            fresh = P.pack_tokens(latent, text, cu_latent, cu_seqlens, total)
            assert T.own_mapping(fresh), "a fresh large output did not get its own mapping"
            del fresh
            libc = ctypes.CDLL(None)
            M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
            assert libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
            warm = torch.ones(total * 4097 + (8 << 20), dtype=torch.float16)  # faulted in, then freed to the heap
            del warm
            recycled = P.pack_tokens(latent, text, cu_latent, cu_seqlens, total)
            assert not T.own_mapping(recycled), "already-faulted heap memory was replaced by a fresh mapping"
            assert torch.equal(recycled, want)
        print("OK")
    """)
