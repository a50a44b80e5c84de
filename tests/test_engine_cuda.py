"""The engine on a CUDA device (skipped without one): the Triton kernels are what "auto" picks there, the
per-sample packed stream still equals single-sample runs, and bf16 generation stays finite.

Run on a GPU host:  python -m pytest -q tests/test_engine_cuda.py
"""
import pytest
import torch

import _tiny_pipes as tp
from _tolerances import assert_verbose_allclose

from dvg_engine.engine import compile_pipeline
from dvg_engine.ops import _registry

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GEOM = dict(height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES, num_inference_steps=tp.STEPS,
            output_type="latent")
DEMANDS = [{"spatial_demand": 1.0, "temporal_demand": 0.0}, {"spatial_demand": 0.0, "temporal_demand": 1.0}]


def gens(batch, seed=0):
    return [torch.Generator().manual_seed(seed + b) for b in range(batch)]


def cuda_prompt(batch, dtype):
    return {k: v.to("cuda", dtype) for k, v in tp.hv_prompt(batch, valid_lengths=[9, 6][:batch]).items()}


def test_cuda_fp32_enabled_false_matches_uncompiled_with_triton_attention():
    pipe = tp.hv_pipe().to("cuda")
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(**cuda_prompt(2, torch.float32), generator=gens(2), **GEOM).frames
    compile_pipeline(pipe, enabled=False)
    _registry.reset_call_counts()
    out = pipe(**cuda_prompt(2, torch.float32), generator=gens(2), **GEOM).frames
    assert _registry.CALL_COUNTS.get(("varlen_attention", "triton"), 0) > 0, _registry.CALL_COUNTS
    # the Triton kernel's fp32 dots may run in TF32; a packing error would be O(1)
    assert_verbose_allclose(out, ref, atol=1e-2, rtol=1e-2, name="CUDA enabled=False vs uncompiled")


def test_cuda_fp32_per_sample_packed_matches_single_runs_with_triton_ops():
    pipe = tp.hv_pipe().to("cuda")
    pipe.set_progress_bar_config(disable=True)
    compile_pipeline(pipe, budget=0.5, plan=DEMANDS)
    _registry.reset_call_counts()
    prompt = cuda_prompt(2, torch.float32)
    both = pipe(**prompt, generator=gens(2), **GEOM).frames
    for op in ("varlen_attention", "resample_renoise", "modulated_layer_norm"):
        assert _registry.CALL_COUNTS.get((op, "triton"), 0) > 0, (op, _registry.CALL_COUNTS)
    for b in range(2):
        compile_pipeline(pipe, plan=[DEMANDS[b]])
        alone = pipe(**{k: v[b:b + 1] for k, v in prompt.items()}, generator=gens(1, seed=b), **GEOM).frames
        assert_verbose_allclose(both[b:b + 1], alone, atol=1e-2, rtol=1e-2, name=f"CUDA sample {b}")


def test_cuda_bf16_dvg_runs_finite():
    pipe = tp.hv_pipe().to("cuda", torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    compile_pipeline(pipe, budget=0.5, plan=DEMANDS)
    out = pipe(**cuda_prompt(2, torch.bfloat16), generator=gens(2), **GEOM).frames
    assert out.shape == (2, 4, 9, 16, 24) and torch.isfinite(out.float()).all()
    report = pipe.dvg.last_report
    assert report["samples"][0]["stage_shapes"] != report["samples"][1]["stage_shapes"]


def test_cuda_host_syncs_do_not_grow_with_steps():
    """The step loop reads nothing back: the synchronising calls of a generation (the text lengths at setup,
    the demands at planning) are the same for 12 and 20 steps."""
    import warnings
    pipe = tp.hv_pipe().to("cuda")
    pipe.set_progress_bar_config(disable=True)
    compile_pipeline(pipe, budget=0.5, plan_scope="sample")
    counts = []
    for steps in (12, 20):
        pipe(**cuda_prompt(2, torch.float32), generator=gens(2), **dict(GEOM, num_inference_steps=steps))  # warm-up
        torch.cuda.synchronize()
        prompt, generators = cuda_prompt(2, torch.float32), gens(2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                pipe(**prompt, generator=generators, **dict(GEOM, num_inference_steps=steps))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1], f"synchronising calls: {counts[0]} at 12 steps vs {counts[1]} at 20 steps"


def test_cuda_fused_rope_matches_rope_tables_with_triton_pack():
    """fused_rope (RoPE inside the Triton `pack_qk_rope`) against the per-shape tables, per plan group and packed."""
    pipe = tp.hv_pipe().to("cuda")
    pipe.set_progress_bar_config(disable=True)
    compile_pipeline(pipe, budget=0.5, plan=DEMANDS)
    outputs = {}
    for on in (False, True):
        compile_pipeline(pipe, fused_rope=on)
        _registry.reset_call_counts()
        outputs[on] = pipe(**cuda_prompt(2, torch.float32), generator=gens(2), **GEOM).frames
        assert (_registry.CALL_COUNTS.get(("pack_qk_rope", "triton"), 0) > 0) == on, _registry.CALL_COUNTS
    assert_verbose_allclose(outputs[True], outputs[False], atol=1e-3, rtol=1e-3, name="CUDA fused RoPE vs tables")


def test_cuda_hv_i2v_token_replace_packed_matches_single_runs():
    pipe = tp.hv_i2v_pipe("token_replace").to("cuda")
    pipe.set_progress_bar_config(disable=True)
    args = dict(image=tp.test_image(), height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES,
                num_inference_steps=tp.STEPS, output_type="latent")
    prompt = cuda_prompt(2, torch.float32)
    compile_pipeline(pipe, budget=0.5, plan=DEMANDS)
    _registry.reset_call_counts()
    both = pipe(**prompt, **args, generator=gens(2)).frames
    assert _registry.CALL_COUNTS.get(("modulated_layer_norm", "triton"), 0) > 0, _registry.CALL_COUNTS
    for b in range(2):
        compile_pipeline(pipe, plan=[DEMANDS[b]])
        alone = pipe(**{k: v[b:b + 1] for k, v in prompt.items()}, **args, generator=gens(1, seed=b)).frames
        assert_verbose_allclose(both[b:b + 1], alone, atol=1e-2, rtol=1e-2, name=f"CUDA token_replace sample {b}")
