"""The simulated CUDA device of `_cuda_sim`, which runs the CUDA tests' logic on machines without a GPU: it must
keep catching the two test-bug classes that broke the last GPU runs — a host tensor meeting device tensors, and a
synchronising host<->device transfer — and must not flag what CUDA allows."""
import pytest
import torch

from _backends import synchronising_calls
from _cuda_sim import SIM_DEVICE, SimulatedCuda, SimulatedDeviceError, on_device
from dvg_engine import ops


@pytest.fixture
def sim():
    with SimulatedCuda() as mode:
        yield mode


def test_placement_follows_factories_moves_and_ops(sim):
    x = torch.randn(4, 3, device=SIM_DEVICE)
    host = torch.randn(4, 3)
    assert x.device == torch.device("cuda", 0) and host.device == torch.device("cpu")
    assert on_device(torch.zeros(2, device=x.device)) and on_device(x.new_zeros(2)) and on_device(x * 2)
    assert on_device(torch.empty_like(x)) and not on_device(torch.empty_like(x, device="cpu"))
    moved = host.to(SIM_DEVICE)
    assert on_device(moved) and not on_device(host)  # a move is a new tensor; the source stays on the host
    back = x.cpu()
    assert not on_device(back) and on_device(x) and torch.equal(back.to(SIM_DEVICE), x)
    linear = torch.nn.Linear(3, 2).to(SIM_DEVICE)
    assert all(on_device(p) for p in linear.parameters()) and on_device(linear(x))
    assert on_device(x.to(torch.float64)) and on_device(x.to(moved)) and not on_device(x.to(host))


def test_mixing_host_and_device_tensors_raises_like_cuda(sim):
    x = torch.randn(4, 3, device=SIM_DEVICE)
    with pytest.raises(SimulatedDeviceError, match="host tensor"):
        x + torch.ones(4, 3)
    with pytest.raises(SimulatedDeviceError):
        torch.cat([x, torch.ones(1, 3)])
    # what CUDA accepts: host 0-d tensors (scalars), host index tensors, copies between the two
    assert on_device(x * torch.tensor(2.0)) and on_device(x[torch.tensor([0, 2])])
    x[torch.tensor([1])] = torch.zeros(1, 3).to(SIM_DEVICE)
    x.copy_(torch.ones(4, 3))


def test_host_cu_seqlens_with_device_tokens_is_caught(sim):
    """The bug of the first GPU run: validation tests built cu_seqlens on the host while the tokens were on
    the GPU, so the op answered with a device error instead of the one under test."""
    q = torch.randn(10, 2, 16, device=SIM_DEVICE)
    cu_host = torch.tensor([0, 4, 10], dtype=torch.int32)
    with pytest.raises(SimulatedDeviceError, match="varlen_attention"):
        ops.varlen_attention(q, q, q, cu_host, cu_host, 6, 6)
    cu = cu_host.to(SIM_DEVICE)
    assert on_device(ops.varlen_attention(q, q, q, cu, cu, 6, 6, validate=False))


def test_synchronising_calls_are_counted(sim):
    """The bug of the second GPU run: a per-step `torch.tensor(value, device="cuda")`, a blocking host->device
    copy, in the step loop."""
    x = torch.randn(8, device=SIM_DEVICE)
    cu = ops.packed_layout([3, 5], [0, 0], SIM_DEVICE)[1]
    q = torch.randn(8, 1, 16, device=SIM_DEVICE)
    expected = [  # (call, number of syncs it makes on CUDA)
        (lambda: torch.tensor([1.0, 2.0], device=SIM_DEVICE), 1),
        (lambda: torch.ones(3).to(SIM_DEVICE), 1),
        (lambda: torch.ones(3).to(SIM_DEVICE, non_blocking=True), 0),
        (lambda: x.sum().item(), 1),
        (lambda: bool(x.sum() > 0), 1),
        (lambda: x.tolist(), 1),
        (lambda: x.cpu(), 1),
        (lambda: x[x > 0], 1),
        (lambda: torch.nonzero(x), 1),
        (lambda: torch.zeros(3, device=SIM_DEVICE) + x[:3] * 2, 0),
        (lambda: float(torch.tensor(1.5)), 0),  # a host tensor: no device involved
        (lambda: ops.varlen_attention(q, q, q, cu, cu, 5, 5), 1),  # validate=True reads cu_seqlens back
        (lambda: ops.varlen_attention(q, q, q, cu, cu, 5, 5, validate=False), 0),
        (lambda: torch.cuda.synchronize(), 1),
    ]
    for i, (call, syncs) in enumerate(expected):
        before = sim.sync_count()
        call()
        assert sim.sync_count() - before == syncs, (i, sim.syncs[before:])


def test_torch_compile_runs_outside_the_simulation(sim):
    x = torch.randn(5, device=SIM_DEVICE)
    out = torch.compile(lambda t: torch.sin(t) * 2, backend="eager", fullgraph=True)(x)
    assert on_device(out) and torch.allclose(out, torch.sin(x) * 2)


def test_sync_debug_mode_is_emulated(sim):
    """torch.cuda.set_sync_debug_mode works on the simulated device as on a GPU, so a test counting its warnings
    runs unchanged on both."""
    x = torch.randn(4, device=SIM_DEVICE)
    assert synchronising_calls(lambda: (x.sum().item(), x * 2, x.tolist())) == 2
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchronizing CUDA operation"):
            x.cpu()
        x + 1
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.cuda.get_sync_debug_mode() == 0
