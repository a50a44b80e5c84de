"""The engine's optional fused RoPE (`fused_rope`: RoPE applied while packing q/k with
`torch.ops.dvg.pack_qk_rope`, cos/sin from each token's position) against the default path (the
transformer's per-shape cos/sin tables applied before packing): same videos within the attention tolerance —
per plan group (padded text, HunyuanVideo's single-stream blocks included), in the per-sample packed stream,
and for HunyuanVideo-1.5 with CFG."""

import pytest

import _tiny_pipes as tp
from _tolerances import assert_verbose_allclose

from dvg_engine.engine import compile_pipeline
from dvg_engine.ops import _registry

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEMANDS = [{"spatial_demand": 1.0, "temporal_demand": 0.0}, {"spatial_demand": 0.0, "temporal_demand": 1.0}]
# fp32; both paths attend over the same packed order, only the in-kernel cos/sin may differ from torch's tables
# in the last bit (measured max difference 5e-7). RoPE moves this random-weight model's output little: a 5%
# change of theta is about 2e-4 (the sensitivity check below).
ATOL = 2e-5


def _set_fused_rope(pipe, on: bool) -> None:
    compile_pipeline(pipe, fused_rope=on)


def _run_both(pipe, call):
    """-> (table-path output, fused-path output); checks which path each run took."""
    counts = {}
    outputs = {}
    for on in (False, True):
        _set_fused_rope(pipe, on)
        _registry.reset_call_counts()
        outputs[on] = call()
        counts[on] = sum(n for (op, _), n in _registry.CALL_COUNTS.items() if op == "pack_qk_rope")
    assert counts[False] == 0 and counts[True] > 0, counts
    return outputs[False], outputs[True]


@pytest.mark.parametrize("plans", ["one_plan", "two_plans"])
def test_hv_fused_rope_matches_rope_tables(hv, plans, monkeypatch):
    pipe = compile_pipeline(hv, budget=0.5, plan=DEMANDS if plans == "two_plans" else DEMANDS[0])
    prompt = tp.hv_prompt(2, valid_lengths=[9, 5])
    args = dict(height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES, num_inference_steps=tp.STEPS,
                output_type="latent")
    try:
        table, fused = _run_both(pipe, lambda: pipe(**prompt, generator=tp.gens(2), **args).frames)
        shapes = [s["stage_shapes"] for s in pipe.dvg.last_report["samples"]]
        assert (shapes[0] != shapes[1]) == (plans == "two_plans")
        assert_verbose_allclose(fused, table, atol=ATOL, rtol=1e-5, name=f"fused RoPE vs tables ({plans})")
        if plans == "two_plans":
            # the comparison can fail: slightly wrong fused positions (theta 5% off) move the output past ATOL
            from dvg_engine import processors
            build = processors.FusedRope.build.__func__
            monkeypatch.setattr(processors.FusedRope, "build", classmethod(
                lambda cls, grids, text, stream, axes, theta, device: build(cls, grids, text, stream, axes,
                                                                             theta * 1.05, device)))
            off = pipe(**prompt, generator=tp.gens(2), **args).frames
            assert (off - table).abs().max() > 5 * ATOL
    finally:
        pipe.dvg.restore()


def test_hv15_cfg_fused_rope_matches_rope_tables():
    pipe = tp.hv15_pipe(guidance_scale=4.0)
    pipe.set_progress_bar_config(disable=True)
    compile_pipeline(pipe, budget=0.5, plan=DEMANDS)
    args = dict(num_frames=tp.FRAMES, height=tp.HEIGHT, width=tp.WIDTH, num_inference_steps=tp.STEPS,
                output_type="latent")
    prompt = tp.hv15_prompt(2, negative=True)
    table, fused = _run_both(pipe, lambda: pipe(**prompt, generator=tp.gens(2), **args).frames)
    assert_verbose_allclose(fused, table, atol=ATOL, rtol=1e-5, name="HV-1.5 fused RoPE vs tables")


def test_fused_rope_segments_must_match_the_attention_layout():
    """The fused ops run with validate=False on the layout and on its FusedRope: attaching one whose segments
    (latent + text tokens) differ from the layout's is refused on the host."""
    from dvg_engine import processors
    layout = processors.PackedAttention.prefix([2 * 3 * 4 + 5, 2 * 3 * 4 + 7], 2 * 3 * 4 + 8, "cpu")
    layout.attach_fused_rope([(2, 3, 4)] * 2, [5, 7], False, [16, 24, 24], 256.0)
    assert layout.fused_rope.total == 2 * 24 + 12 and layout.fused_rope.total_latent == 48
    with pytest.raises(RuntimeError, match=r"fused-RoPE segments \[29, 31\] .* differ from the attention layout's "
                                           r"\[29, 32\]"):
        processors.PackedAttention.prefix([29, 32], 32, "cpu").attach_fused_rope([(2, 3, 4)] * 2, [5, 7], False,
                                                                                 [16, 24, 24], 256.0)
