"""One packed DVG attention step chained through the ops — pack → varlen attention → unpack → segment-modulated
LayerNorm — for two samples on different stage grids (one without text):

* on every machine, each backend that can run here against the torch reference;
* on a GPU, captured once in a CUDA graph and replayed after the inputs changed in place (what a serving stack
  does per step): the replay must equal an eager run, which also shows that no op syncs with the host or
  allocates outside the graph's pool once `validate=False` (the engine builds cu_seqlens on the host);
* without a GPU, on the simulated device of `_cuda_sim`: the step keeps every tensor on the device and makes no
  call that would synchronise with the host (what capture needs), with the kernels "auto" picks on the CPU.
"""
import os

import pytest
import torch

from _backends import synchronising_calls
from dvg_engine import ops
from dvg_engine.ops import _registry

HEADS, HEAD_DIM, TEXT_MAX = 2, 64, 20
GRIDS = [(3, 4, 6), (2, 3, 5)]       # two samples on different stage grids
TEXT_LENS = [17, 0]                  # the second sample has no valid text


def _inputs(device, dtype):
    lat_lens = [t * h * w for t, h, w in GRIDS]
    cu_latent, cu_seqlens, total, max_seqlen = ops.packed_layout(lat_lens, TEXT_LENS, device)
    g = torch.Generator("cpu").manual_seed(0)
    latent = torch.randn(sum(lat_lens), HEADS, HEAD_DIM, generator=g).to(device, dtype)
    text = torch.randn(len(GRIDS), TEXT_MAX, HEADS, HEAD_DIM, generator=g).to(device, dtype)
    scale = (0.1 * torch.randn(len(GRIDS), HEADS * HEAD_DIM, generator=g)).to(device, dtype)
    shift = (0.1 * torch.randn(len(GRIDS), HEADS * HEAD_DIM, generator=g)).to(device, dtype)
    return dict(latent=latent, text=text, scale=scale, shift=shift, cu_latent=cu_latent, cu_seqlens=cu_seqlens,
                total=total, max_seqlen=max_seqlen, total_latent=sum(lat_lens))


def _step(d):
    packed = ops.pack_tokens(d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], d["total"], validate=False)
    out = ops.varlen_attention(packed, packed, packed, d["cu_seqlens"], d["cu_seqlens"], d["max_seqlen"],
                               d["max_seqlen"], validate=False)
    latent, text = ops.unpack_tokens(out, d["cu_latent"], d["cu_seqlens"], d["total_latent"], TEXT_MAX,
                                     validate=False)
    y = ops.modulated_layer_norm(latent.reshape(latent.shape[0], HEADS * HEAD_DIM), d["cu_latent"], d["scale"],
                                 d["shift"], validate=False)
    return y, text


def _runnable_backends():
    names = ["torch"]
    if _registry.triton_importable() and os.environ.get("TRITON_INTERPRET") == "1":
        names.append("triton")
    return names


@pytest.mark.parametrize("backend", _runnable_backends())
def test_packed_step_matches_reference_on_cpu(backend):
    d = _inputs("cpu", torch.float32)
    with _registry.use_backend("torch"):
        ref_y, ref_text = _step(d)
    _registry.reset_call_counts()
    with _registry.use_backend(backend):
        y, text = _step(d)
    ran = {op for (op, name) in _registry.CALL_COUNTS if name == backend}
    assert ran == {"pack_tokens", "varlen_attention", "unpack_tokens", "modulated_layer_norm"}, ran
    torch.testing.assert_close(y, ref_y, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(text, ref_text, atol=2e-5, rtol=2e-5)
    assert torch.count_nonzero(text[1]) == 0          # the text-less sample's padded text stays zero
    assert torch.count_nonzero(text[0, TEXT_LENS[0]:]) == 0


def test_packed_step_stays_on_the_device_without_host_syncs(cuda_device):
    """The precondition of capturing the step in a CUDA graph, checked on every machine: on the device, with
    `validate=False`, nothing is read back or copied from the host (a GPU run also captures it, below)."""
    d = _inputs(cuda_device, torch.float32)
    y, text = _step(d)  # warm-up: on a GPU the first call compiles and autotunes the kernels, which syncs
    assert synchronising_calls(lambda: _step(d)) == 0
    assert y.device == text.device == torch.device(cuda_device)
    assert y.shape == (sum(t * h * w for t, h, w in GRIDS), HEADS * HEAD_DIM) and bool(torch.isfinite(y).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_capture_and_replay_of_a_packed_step():
    d = _inputs("cuda", torch.bfloat16)
    with _registry.use_backend("triton"):
        _step(d)                                      # warm-up: compiles and finishes autotuning before capture
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            _step(d)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured_y, captured_text = _step(d)
        # new inputs in place, as the engine's static buffers would receive them each step
        d["latent"].mul_(0.5).add_(0.25)
        d["text"].mul_(-1.0)
        graph.replay()
        torch.cuda.synchronize()
        eager_y, eager_text = _step(d)
    torch.testing.assert_close(captured_y, eager_y)
    torch.testing.assert_close(captured_text, eager_text)
