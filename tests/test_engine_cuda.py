"""The engine on a CUDA device: the Triton kernels are what "auto" picks there, the per-sample packed stream still
equals single-sample runs, bf16 generation stays finite, and the step loop reads nothing back from the device.

Each test runs on "cpu" and on "cuda" — the GPU where one is present, else the simulated device of `_cuda_sim`
(CPU kernels; tensor placement and host syncs followed), so the device logic is checked on every machine.

Run on a GPU host:  python -m pytest -q tests/test_engine_cuda.py
"""
import pytest
import torch

import _tiny_pipes as tp
from _backends import auto_backend, synchronising_calls
from _tolerances import assert_verbose_allclose

from dvg_engine.engine import compile_pipeline
from dvg_engine.ops import _registry

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GEOM = dict(height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES, num_inference_steps=tp.STEPS,
            output_type="latent")
DEMANDS = [{"spatial_demand": 1.0, "temporal_demand": 0.0}, {"spatial_demand": 0.0, "temporal_demand": 1.0}]
# fp32 model: the Triton attention's fp32 dots run in IEEE fp32, so only the summation order differs from the
# reference; a packing or text-mask error would be O(1)
FP32_TOL = dict(atol=1e-2, rtol=1e-2)


def gens(batch, seed=0):
    return [torch.Generator().manual_seed(seed + b) for b in range(batch)]  # CPU generators, as diffusers allows


def prompt_on(device, batch, dtype=torch.float32):
    return {k: v.to(device, dtype) for k, v in tp.hv_prompt(batch, valid_lengths=[9, 6][:batch]).items()}


def pipe_on(device, dtype=torch.float32, pipe=None):
    pipe = (pipe or tp.hv_pipe()).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assert_ran(op, device):
    backend = auto_backend(op, device)
    assert _registry.CALL_COUNTS.get((op, backend), 0) > 0, (op, backend, _registry.CALL_COUNTS)


def test_enabled_false_matches_uncompiled_with_auto_attention(device):
    pipe = pipe_on(device)
    ref = pipe(**prompt_on(device, 2), generator=gens(2), **GEOM).frames
    compile_pipeline(pipe, enabled=False)
    _registry.reset_call_counts()
    out = pipe(**prompt_on(device, 2), generator=gens(2), **GEOM).frames
    assert out.device == ref.device == torch.device(device)
    assert_ran("varlen_attention", device)
    assert_verbose_allclose(out, ref, **FP32_TOL, name=f"{device} enabled=False vs uncompiled")


def test_per_sample_packed_matches_single_runs_with_auto_ops(device):
    pipe = pipe_on(device)
    compile_pipeline(pipe, budget=0.5, plan=DEMANDS)
    _registry.reset_call_counts()
    prompt = prompt_on(device, 2)
    both = pipe(**prompt, generator=gens(2), **GEOM).frames
    for op in ("varlen_attention", "resample_renoise", "modulated_layer_norm"):
        assert_ran(op, device)
    for b in range(2):
        compile_pipeline(pipe, plan=[DEMANDS[b]])
        alone = pipe(**{k: v[b:b + 1] for k, v in prompt.items()}, generator=gens(1, seed=b), **GEOM).frames
        assert_verbose_allclose(both[b:b + 1], alone, **FP32_TOL, name=f"{device} sample {b}")


def test_bf16_dvg_runs_finite(device):
    pipe = pipe_on(device, torch.bfloat16)
    compile_pipeline(pipe, budget=0.5, plan=DEMANDS)
    out = pipe(**prompt_on(device, 2, torch.bfloat16), generator=gens(2), **GEOM).frames
    assert out.shape == (2, 4, 9, 16, 24) and out.device == torch.device(device)
    assert torch.isfinite(out.float()).all()
    report = pipe.dvg.last_report
    assert report["samples"][0]["stage_shapes"] != report["samples"][1]["stage_shapes"]


@pytest.mark.parametrize("plans", ["mixed", "batch"])
def test_host_syncs_do_not_grow_with_steps(cuda_device, plans):
    """The step loop reads nothing back: the synchronising calls of a generation (the text lengths at setup, the
    demands at planning, the copies and syncs at each of the three transitions) are the same for 12 and 20 steps.
    "mixed": two samples on different (given) plans, so the packed forward runs; "batch": one plan planned from
    the demands. Both keep the number of plan groups — and so of per-transition copies — fixed across the two
    step counts, which planning each sample from its own demands would not guarantee."""
    pipe = pipe_on(cuda_device)
    compile_pipeline(pipe, budget=0.5, **(dict(plan=DEMANDS) if plans == "mixed" else dict(plan_scope="batch")))
    counts = []
    for steps in (12, 20):
        geom = dict(GEOM, num_inference_steps=steps)
        pipe(**prompt_on(cuda_device, 2), generator=gens(2), **geom)  # warm-up: kernels compiled and autotuned
        prompt, generators = prompt_on(cuda_device, 2), gens(2)
        counts.append(synchronising_calls(lambda: pipe(**prompt, generator=generators, **geom)))
        shapes = [s["stage_shapes"] for s in pipe.dvg.last_report["samples"]]
        assert (shapes[0] != shapes[1]) == (plans == "mixed"), shapes
    assert counts[0] > 0  # the count sees the syncs that are there (the text lengths' read at setup, at least)
    assert counts[0] == counts[1], f"synchronising calls: {counts[0]} at 12 steps vs {counts[1]} at 20 steps"


def test_fused_rope_matches_rope_tables(device):
    """fused_rope (RoPE inside `pack_qk_rope`) against the per-shape tables, per plan group and packed."""
    pipe = pipe_on(device)
    compile_pipeline(pipe, budget=0.5, plan=DEMANDS)
    outputs = {}
    for on in (False, True):
        compile_pipeline(pipe, fused_rope=on)
        _registry.reset_call_counts()
        outputs[on] = pipe(**prompt_on(device, 2), generator=gens(2), **GEOM).frames
        ran = _registry.CALL_COUNTS.get(("pack_qk_rope", auto_backend("pack_qk_rope", device)), 0) > 0
        assert ran == on, _registry.CALL_COUNTS
    assert_verbose_allclose(outputs[True], outputs[False], atol=1e-3, rtol=1e-3, name=f"{device} fused RoPE vs tables")


def test_hv_i2v_token_replace_packed_matches_single_runs(device):
    pipe = pipe_on(device, pipe=tp.hv_i2v_pipe("token_replace"))
    args = dict(image=tp.test_image(), height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES,
                num_inference_steps=tp.STEPS, output_type="latent")
    prompt = prompt_on(device, 2)
    compile_pipeline(pipe, budget=0.5, plan=DEMANDS)
    _registry.reset_call_counts()
    both = pipe(**prompt, **args, generator=gens(2)).frames
    assert_ran("modulated_layer_norm", device)
    for b in range(2):
        compile_pipeline(pipe, plan=[DEMANDS[b]])
        alone = pipe(**{k: v[b:b + 1] for k, v in prompt.items()}, **args, generator=gens(1, seed=b)).frames
        assert_verbose_allclose(both[b:b + 1], alone, **FP32_TOL, name=f"{device} token_replace sample {b}")
