"""Engine tests on tiny HunyuanVideo pipelines built from configs (tests/_tiny_pipes.py).

Geometry: 128×192 px × 33 frames → latent [9, 16, 24] (HV) — the parity setup for which budget 0.5 with
12 steps is feasible and the four stages are distinct.
"""
import json

import pytest
import torch

import _tiny_pipes as tp
from _tolerances import assert_verbose_allclose

from dvg_engine import processors
from dvg_engine.engine import compile_pipeline
from _tiny_pipes import gens  # noqa: F401  (also the fixtures hv / fresh_hv, in conftest.py)
from dvg_engine.ops import _registry
from dvg_engine import planner

# tiny tensors: torch's intra-op threads only add spin-wait on the shared CI cores (see conftest)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

GEOM = dict(height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES, num_inference_steps=tp.STEPS,
            output_type="latent")
# fp32 model; the varlen path changes only the summation order of the attention
ATTN_ATOL = 2e-4




def run(pipe, batch=1, seed=0, prompt=None, **kw):
    prompt = prompt or tp.hv_prompt(batch)
    args = dict(GEOM)
    args.update(kw)
    return pipe(**prompt, generator=gens(batch, seed), **args).frames


def record_forward_shapes(transformer):
    shapes = []
    handle = transformer.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["hidden_states"].shape)), with_kwargs=True)
    return shapes, handle


def test_enabled_false_matches_uncompiled_and_skips_text_padding(fresh_hv, monkeypatch):
    pipe = fresh_hv
    prompt = tp.hv_prompt(2, valid_lengths=[9, 5])
    ref = run(pipe, 2, prompt=prompt)
    compile_pipeline(pipe, enabled=False)
    seen = []
    original = processors.packed_attention
    monkeypatch.setattr(processors, "packed_attention",
                        lambda q, k, v, layout: seen.append(layout) or original(q, k, v, layout))
    _registry.reset_call_counts()
    out = run(pipe, 2, prompt=prompt)
    assert_verbose_allclose(out, ref, atol=ATTN_ATOL, rtol=1e-4, name="enabled=False vs uncompiled")
    attn_calls = sum(n for (op, _), n in _registry.CALL_COUNTS.items() if op == "varlen_attention")
    layers = pipe.transformer.config.num_layers + pipe.transformer.config.num_single_layers
    assert attn_calls == layers * tp.STEPS
    assert len(seen) == attn_calls
    n_img = 9 * 8 * 12
    for layout in seen:
        # one segment per sample, holding the latent tokens and only the valid text tokens (padding skipped)
        assert layout.segment_lengths == [n_img + 9, n_img + 5]
        assert layout.cu_seqlens.tolist() == [0, n_img + 9, 2 * n_img + 14]
        assert layout.seq_len == n_img + tp.HV_TEXT_LEN


def test_dvg_forward_shapes_match_report_and_executed_calls(fresh_hv):
    pipe = compile_pipeline(fresh_hv, budget=0.5)
    shapes, hook = record_forward_shapes(pipe.transformer)
    try:
        out = run(pipe, 1)
    finally:
        hook.remove()
    report = pipe.dvg.last_report
    sample = report["samples"][0]
    stage_shapes = [tuple(s) for s in sample["stage_shapes"]]
    assert stage_shapes[-1] == (9, 16, 24)
    assert len(set(stage_shapes)) == 4, stage_shapes
    executed = planner.executed_model_calls(tp.STEPS)
    assert tuple(report["executed_model_calls"]) == executed == (4, 3, 2, 3)
    expected = [s for s, n in zip(stage_shapes, executed) for _ in range(n)]
    assert [s[2:] for s in shapes] == expected
    assert all(s[:2] == (1, 4) for s in shapes)
    assert out.shape == (1, 4, 9, 16, 24)
    assert report["schema_version"] == 1 and report["transition_steps"] == [3, 6, 8]
    assert 0 < sample["token_step_ratio"] < 1 and 0 < sample["attention_flop_ratio"] < 1
    assert set(sample["demands"]) == {"spatial_demand", "temporal_demand"}


def test_restore_is_bit_identical_and_returns_original_processors(fresh_hv):
    pipe = fresh_hv
    before = dict(pipe.transformer.attn_processors)
    cls = type(pipe)
    ref = run(pipe, 1)
    compile_pipeline(pipe, budget=0.5)
    assert type(pipe) is not cls and "dvg" in pipe.__dict__
    run(pipe, 1)
    pipe.dvg.restore()
    assert type(pipe) is cls and "dvg" not in pipe.__dict__
    after = pipe.transformer.attn_processors
    assert all(after[name] is proc for name, proc in before.items())
    assert torch.equal(run(pipe, 1), ref)


def test_compile_twice_updates_config_without_stacking(fresh_hv):
    pipe = compile_pipeline(fresh_hv, budget=0.5)
    compile_pipeline(pipe, budget=0.55, plan_scope="batch")
    assert pipe.dvg.config.budget == 0.55 and pipe.dvg.config.plan_scope == "batch"
    for name in processors.joint_attention_names(pipe.transformer):
        proc = pipe.transformer.attn_processors[name]
        assert isinstance(proc, processors.DVGAttnProcessor)
        assert not isinstance(proc.original, processors.DVGAttnProcessor)
    refiner = [p for n, p in pipe.transformer.attn_processors.items() if n.startswith("context_embedder.")]
    assert refiner and not any(isinstance(p, processors.DVGAttnProcessor) for p in refiner)


def test_shared_transformer_pipeline_is_unaffected(fresh_hv):
    from diffusers import HunyuanVideoPipeline
    other = HunyuanVideoPipeline.from_pipe(fresh_hv)
    other.set_progress_bar_config(disable=True)
    ref = run(other, 1)
    compile_pipeline(fresh_hv, budget=0.5)
    assert other.transformer is fresh_hv.transformer
    assert torch.equal(run(other, 1), ref)


def test_callback_sees_stage_shapes(fresh_hv):
    pipe = compile_pipeline(fresh_hv, budget=0.5)
    seen = []
    run(pipe, 1, callback_on_step_end=lambda p, i, t, kw: seen.append((i, tuple(kw["latents"].shape))) or {})
    shapes = [tuple(s) for s in pipe.dvg.last_report["samples"][0]["stage_shapes"]]
    # after the transition at step 3 the latents are at stage 1's shape, etc.
    expected_stage = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3]
    assert [s for _, s in seen] == [(1, 4) + shapes[k] for k in expected_stage]


def test_plan_replay_and_explicit_demands(fresh_hv):
    pipe = compile_pipeline(fresh_hv, budget=0.5)
    first = run(pipe, 1)
    report = json.loads(json.dumps(pipe.dvg.last_report))  # the report is plain JSON
    compile_pipeline(pipe, plan=report["samples"][0]["plan"])
    again = run(pipe, 1)
    assert torch.equal(first, again)
    assert pipe.dvg.last_report["samples"][0]["stage_shapes"] == report["samples"][0]["stage_shapes"]
    compile_pipeline(pipe, plan={"spatial_demand": 1.0, "temporal_demand": 0.0})
    run(pipe, 1)
    chosen_space = pipe.dvg.last_report["samples"][0]["chosen"]
    compile_pipeline(pipe, plan={"spatial_demand": 0.0, "temporal_demand": 1.0})
    run(pipe, 1)
    chosen_time = pipe.dvg.last_report["samples"][0]["chosen"]
    assert chosen_space["s2"] > chosen_time["s2"] and chosen_space["t23"] < chosen_time["t23"]


# ---- bad input -------------------------------------------------------------------------------------

def test_unsupported_pipeline_names_supported_ones():
    class NotAPipeline:
        pass
    with pytest.raises(TypeError, match="HunyuanVideoPipeline.*HunyuanVideo15Pipeline"):
        compile_pipeline(NotAPipeline())


def test_infeasible_budget_states_range_before_model_compute(fresh_hv):
    pipe = compile_pipeline(fresh_hv, budget=0.95)
    shapes, hook = record_forward_shapes(pipe.transformer)
    try:
        with pytest.raises(planner.InfeasibleBudgetError, match=r"feasible budgets: \["):
            run(pipe, 1)
    finally:
        hook.remove()
    assert shapes == []


def test_budget_fallback_nearest_plans_with_the_nearest_feasible_budget(fresh_hv):
    pipe = compile_pipeline(fresh_hv, budget=0.95, budget_fallback="nearest")
    run(pipe, 1)
    report = pipe.dvg.last_report
    grid = planner.FullGrid.from_dict(report["grid"])
    intervals = planner.feasible_budget_intervals(grid, tp.STEPS)
    assert report["budget"] == 0.95 and report["budget_used"] == max(hi for _, hi in intervals)
    assert report["samples"][0]["plan"]["fallback"]


@pytest.mark.parametrize("height,width", [(136, 192), (128, 200)])
def test_odd_latent_dims_refused(fresh_hv, height, width):
    pipe = compile_pipeline(fresh_hv)
    with pytest.raises(ValueError, match="patch size 2.*multiple of 16"):
        run(pipe, 1, height=height, width=width)


def test_num_frames_not_4k_plus_1(fresh_hv):
    pipe = compile_pipeline(fresh_hv, enabled=False)
    with pytest.raises(ValueError, match="num_frames=34 is not of the form 4k\\+1.*round_num_frames=True"):
        run(pipe, 1, num_frames=34, num_inference_steps=2)
    compile_pipeline(pipe, round_num_frames=True)
    with pytest.warns(UserWarning, match="num_frames=34 rounded to 33"):
        out = run(pipe, 1, num_frames=34, num_inference_steps=2)
    assert out.shape[2] == 9


def test_non_prefix_text_mask_refused(fresh_hv):
    pipe = compile_pipeline(fresh_hv)
    prompt = tp.hv_prompt(1)
    prompt["prompt_attention_mask"][0, 2] = 0
    with pytest.raises(ValueError, match="prompt_attention_mask row 0 is not a prefix mask"):
        run(pipe, 1, prompt=prompt)


def test_too_few_steps(fresh_hv):
    pipe = compile_pipeline(fresh_hv, budget=0.5)
    with pytest.raises(ValueError, match="num_inference_steps=4 .*only 3 distinct stages.*allow_fewer_stages"):
        run(pipe, 1, num_inference_steps=4)
    with pytest.raises(ValueError, match="num_inference_steps=3 puts a DVG transition at the final step"):
        run(pipe, 1, num_inference_steps=3)
    compile_pipeline(pipe, allow_fewer_stages=True)
    out = run(pipe, 1, num_inference_steps=4)
    stage2 = pipe.dvg.last_report["samples"][0]["stage_shapes"][2]
    assert list(out.shape[2:]) == stage2 and stage2 != [9, 16, 24]


def test_custom_sigmas_refused_with_dvg(fresh_hv):
    pipe = compile_pipeline(fresh_hv)
    with pytest.raises(ValueError, match="sigmas=.*enabled=False"):
        run(pipe, 1, sigmas=[1.0, 0.5])


def test_unknown_option_and_bad_config():
    pipe = tp.hv_pipe()
    with pytest.raises(TypeError, match="unknown DVG option"):
        compile_pipeline(pipe, budgt=0.5)
    with pytest.raises(TypeError, match="config="):
        compile_pipeline(pipe, config={"budget": 0.5})


# ---- per-sample plans ---------------------------------------------------------------------------------

DEMANDS_SPACE = {"spatial_demand": 1.0, "temporal_demand": 0.0}
DEMANDS_TIME = {"spatial_demand": 0.0, "temporal_demand": 1.0}


def test_per_sample_plans_pack_into_one_stream_and_match_single_runs(fresh_hv, monkeypatch):
    pipe = compile_pipeline(fresh_hv, budget=0.5, plan=[DEMANDS_SPACE, DEMANDS_TIME])
    prompt = tp.hv_prompt(2, valid_lengths=[9, 6])
    layouts = []
    original = processors.packed_attention
    monkeypatch.setattr(processors, "packed_attention",
                        lambda q, k, v, layout: layouts.append(layout) or original(q, k, v, layout))
    both = run(pipe, 2, prompt=prompt)
    report = pipe.dvg.last_report
    shapes = [s["stage_shapes"] for s in report["samples"]]
    assert shapes[0] != shapes[1] and shapes[0][0] == shapes[1][0] and shapes[0][3] == shapes[1][3]
    layers = pipe.transformer.config.num_layers + pipe.transformer.config.num_single_layers
    # stage 0 (4 steps): the two samples share the shape, one padded batch of 2; stages 1-3: one packed stream
    packed = [lay for lay in layouts if lay.batch == 1]
    assert len(packed) == layers * (tp.STEPS - 4) and len(layouts) == layers * tp.STEPS
    for lay in packed:
        assert lay.cu_seqlens.numel() == 3 and lay.segment_lengths[0] != lay.segment_lengths[1]
    monkeypatch.setattr(processors, "packed_attention", original)
    for b, demands in enumerate((DEMANDS_SPACE, DEMANDS_TIME)):
        compile_pipeline(pipe, plan=[demands])
        single = {k: v[b:b + 1] for k, v in prompt.items()}
        alone = pipe(**single, generator=[torch.Generator().manual_seed(b)], **GEOM).frames
        assert pipe.dvg.last_report["samples"][0]["stage_shapes"] == shapes[b]
        assert_verbose_allclose(both[b:b + 1], alone, atol=ATTN_ATOL, rtol=1e-4, name=f"sample {b} packed vs alone")


# ---- faithful end to end against the parity vectors -----------------------------------------------------

def test_transitions_match_parity_vectors(fresh_hv, parity_path):
    """The HV setup of parity/transition.json is this tiny geometry (128×192 px, 33 frames, C=4, N=12, shift 7,
    budget 0.5). With the reference's stand-in velocity v = 0.3·roll(x, 1, W) − 0.2·x, and the latents before
    each transition step injected through the callback, the engine's re-noised latents, the plan (made from the
    real x̂0) and the model timesteps must match the reference."""
    import json
    import numpy as np
    cases = [c for c in json.loads((parity_path / "transition.json").read_text()) if c["model"] == "hunyuan_video"]
    arrays = np.load(parity_path / "transition.npz")
    assert cases and {c["num_steps"] for c in cases} == {tp.STEPS}
    by_step = {c["step"]: c for c in cases}
    pipe = compile_pipeline(fresh_hv, budget=cases[0]["budget"])
    timesteps = []

    def velocity(module, args, kwargs, output):
        x = kwargs["hidden_states"].float()
        timesteps.append(float(kwargs["timestep"][0]))
        return (0.3 * torch.roll(x, 1, dims=4) - 0.2 * x,)

    produced = {}

    def callback(p, i, t, kw):
        if i in by_step:
            produced[i] = kw["latents"].clone()
        nxt = by_step.get(i + 1)
        if nxt is not None:
            return {"latents": torch.from_numpy(arrays[nxt["key"] + "_latents"]).clone()}
        return {}

    hook = pipe.transformer.register_forward_hook(velocity, with_kwargs=True)
    try:
        run(pipe, 1, callback_on_step_end=callback)
    finally:
        hook.remove()
    report = pipe.dvg.last_report
    sample = report["samples"][0]
    first = by_step[min(by_step)]
    assert sample["stage_shapes"] == first["stage_shapes"]
    assert [[list(a) for a in axes] for axes in sample["stage_axes"]] == first["stage_axes"]
    assert (sample["chosen"]["s2"], sample["chosen"]["t23"]) == (first["plan"]["s2"], first["plan"]["t23"])
    assert abs(sample["demands"]["spatial_demand"] - first["plan"]["S"]) < 1e-5
    assert abs(sample["demands"]["temporal_demand"] - first["plan"]["M"]) < 1e-5
    for step, case in by_step.items():
        assert timesteps[step] == case["model_timestep"]
        info = next(t for t in report["transitions"] if t["step"] == step)
        assert info["x0_sigma_index"] == case["x0_sigma_index"] and info["renoise_sigma"] == case["renoise_sigma"]
        expected = torch.from_numpy(arrays[case["key"] + "_new_latents"])
        assert_verbose_allclose(produced[step], expected, atol=2e-5, name=f"new latents after step {step}")


def test_rope_computed_once_per_stage_shape_and_module_restored(fresh_hv):
    pipe = compile_pipeline(fresh_hv, budget=0.5)
    rope = pipe.transformer.rope
    computed = []
    hook = rope.register_forward_hook(lambda m, args, out: computed.append(tuple(args[0].shape[2:])))
    try:
        run(pipe, 1)
    finally:
        hook.remove()
    assert pipe.transformer.rope is rope
    assert computed == [tuple(s) for s in pipe.dvg.last_report["samples"][0]["stage_shapes"]]


def test_triton_backend_inside_the_engine_matches_torch(fresh_hv):
    """backend="triton" routes every engine op through the Triton kernels (the interpreter on CPU) and gives
    the torch backend's result; a small per-sample batch so the packed stream, the segment LayerNorm and the
    fused transition all run."""
    pytest.importorskip("triton")
    if not _registry.triton_interpreting():
        pytest.skip("Triton on these CPU tensors needs TRITON_INTERPRET=1 (the CUDA path: tests/test_engine_cuda.py)")
    pipe = fresh_hv
    args = dict(GEOM, height=64, width=96, num_frames=17, num_inference_steps=6)
    compile_pipeline(pipe, budget=0.5, plan=[DEMANDS_SPACE, DEMANDS_TIME], backend="torch")
    ref = run(pipe, 2, **args)
    compile_pipeline(pipe, backend="triton")
    _registry.reset_call_counts()
    out = run(pipe, 2, **args)
    for op in ("varlen_attention", "resample_renoise", "modulated_layer_norm"):
        assert _registry.CALL_COUNTS.get((op, "triton"), 0) > 0, (op, _registry.CALL_COUNTS)
        assert _registry.CALL_COUNTS.get((op, "torch"), 0) == 0, (op, _registry.CALL_COUNTS)
    assert_verbose_allclose(out, ref, atol=2e-5, rtol=1e-5, name="triton vs torch backend")


@pytest.mark.parametrize("mode", ["reference", "seeded"])
def test_transition_noise_modes(fresh_hv, mode):
    """With the latents before the first transition pinned (callback) and a zero velocity, the re-noised
    latents differ between user seeds only through the transition noise: identical in the reference mode
    (seed 12345 for every video, quirk Q1), different in the seeded mode."""
    pipe = compile_pipeline(fresh_hv, budget=0.5, transition_noise=mode, plan=DEMANDS_SPACE)
    pinned = torch.randn(1, 4, 4, 8, 12, generator=torch.Generator().manual_seed(7))
    after = {}

    def callback(p, i, t, kw):
        if i == 3:
            after[seed] = kw["latents"].clone()
        return {"latents": pinned.clone()} if i == 2 else {}

    hook = pipe.transformer.register_forward_hook(lambda m, a, kw, out: (torch.zeros_like(out[0]),), with_kwargs=True)
    try:
        for seed in (0, 1):
            run(pipe, 1, seed=seed, callback_on_step_end=callback, num_inference_steps=tp.STEPS)
    finally:
        hook.remove()
    assert after[0].shape == after[1].shape
    assert torch.equal(after[0], after[1]) == (mode == "reference")
