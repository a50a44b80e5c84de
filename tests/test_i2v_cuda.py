"""HunyuanVideo I2V with its real prompt path (tiny Llava text encoder, image in the prompt) on a CUDA device: the
kernels "auto" picks there run (Triton), enabled=False matches the uncompiled pipeline, and bf16 DVG keeps frame 0's
conditioning and stays finite in both conditioning modes.

Each test runs on "cpu" and on "cuda" — the GPU where one is present, else the simulated device of `_cuda_sim`.

Run on a GPU host:  python -m pytest -q tests/test_i2v_cuda.py
"""
import pytest
import torch

import _tiny_pipes as tp
from _backends import auto_backend
from _tolerances import assert_verbose_allclose

from dvg_engine import planner
from dvg_engine.engine import compile_pipeline
from dvg_engine.ops import _registry
from dvg_engine.tiny import tiny_hunyuan_video_i2v_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARGS = dict(prompt="a horse galloping across a field", height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES,
            num_inference_steps=tp.STEPS, output_type="latent")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def pipe_on(device, mode, dtype):
    pipe = tiny_hunyuan_video_i2v_pipeline(image_condition_type=mode, num_attention_heads=2, num_layers=1,
                                           num_single_layers=1, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@pytest.mark.parametrize("mode", ["latent_concat", "token_replace"])
def test_fp32_enabled_false_matches_uncompiled_with_auto_attention(device, mode):
    pipe = pipe_on(device, mode, torch.float32)
    ref = pipe(image=tp.test_image(), **ARGS, generator=gen()).frames
    compile_pipeline(pipe, enabled=False)
    _registry.reset_call_counts()
    out = pipe(image=tp.test_image(), **ARGS, generator=gen()).frames
    assert out.device == ref.device == torch.device(device)
    backend = auto_backend("varlen_attention", device)
    assert _registry.CALL_COUNTS.get(("varlen_attention", backend), 0) > 0, _registry.CALL_COUNTS
    # the Triton kernel's fp32 dots run in IEEE fp32 (only the summation order differs); a packing or text-mask
    # error would be O(1)
    assert_verbose_allclose(out, ref, atol=1e-2, rtol=1e-2, name=f"{device} {mode} enabled=False vs uncompiled")


@pytest.mark.parametrize("mode", ["latent_concat", "token_replace"])
def test_bf16_dvg_keeps_frame0_and_stays_finite(device, mode):
    pipe = pipe_on(device, mode, torch.bfloat16)
    compile_pipeline(pipe, budget=0.5)
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: calls.append(kw["hidden_states"].float().cpu()), with_kwargs=True)
    try:
        out = pipe(image=tp.test_image(), **ARGS, generator=gen()).frames
    finally:
        hook.remove()
    assert torch.isfinite(out.float()).all()
    report = pipe.dvg.last_report
    sample = report["samples"][0]
    shapes = [tuple(s) for s in sample["stage_shapes"]]
    assert len(set(shapes)) == 4 and shapes[-1] == (9, 16, 24)
    pixels = pipe.video_processor.preprocess(tp.test_image(), tp.HEIGHT, tp.WIDTH).to(device, pipe.vae.dtype)
    with torch.no_grad():
        image_latent = (pipe.vae.encode(pixels.unsqueeze(2)).latent_dist.mode() * pipe.vae_scaling_factor)
    image_latent = image_latent[:, :, 0].to(torch.bfloat16).float().cpu()
    initial = planner.initial_plan(planner.FullGrid.from_dict(report["grid"]), tp.STEPS, 0.5)
    axes = [initial.stage_axes[0]] + [tuple(a) for a in sample["stage_axes"][1:]]
    per_step = [k for k, n in enumerate(report["executed_model_calls"]) for _ in range(n)]
    assert len(calls) == len(per_step)
    for hidden, k in zip(calls, per_step):
        assert tuple(hidden.shape[2:]) == shapes[k]
        expected = image_latent.index_select(2, torch.tensor(axes[k][1])).index_select(3, torch.tensor(axes[k][2]))
        frame0 = hidden[:, 4:8, 0] if mode == "latent_concat" else hidden[:, :, 0]
        # both sides rounded to bf16 from the same fp32 latent; a wrong row/column pick would be O(1)
        assert_verbose_allclose(frame0, expected, atol=2e-2, rtol=2e-2, name=f"bf16 {mode} frame 0, stage {k}")
