"""Engine tests for HunyuanVideo-1.5 (T2V with the guider's CFG, the distilled guidance-1.0 setting) and the
two image-to-video pipelines, on tiny pipelines built from configs."""
import json

import pytest
import torch

import _tiny_pipes as tp
from _tolerances import assert_verbose_allclose

from dvg_engine import planner, processors
from dvg_engine.engine import compile_pipeline

# tiny tensors: torch's intra-op threads only add spin-wait on the shared CI cores (see conftest)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = tp.STEPS
ATTN_ATOL = 2e-4


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def record(transformer):
    calls = []
    handle = transformer.register_forward_pre_hook(
        lambda m, args, kw: calls.append((kw["hidden_states"].clone(), float(kw["timestep"][0]))), with_kwargs=True)
    return calls, handle


@pytest.fixture(scope="module")
def hv15_cfg():
    pipe = tp.hv15_pipe(guidance_scale=5.0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hv15_args(negative=True, **kw):
    args = dict(**tp.hv15_prompt(1, negative=negative), height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES,
                num_inference_steps=STEPS, output_type="latent")
    args.update(kw)
    return args


def test_hv15_cfg_enabled_false_matches_and_skips_masked_tokens(hv15_cfg, monkeypatch):
    pipe = hv15_cfg
    ref = pipe(**hv15_args(), generator=gen()).frames
    try:
        compile_pipeline(pipe, enabled=False)
        seen = []
        original = processors.packed_attention
        monkeypatch.setattr(processors, "packed_attention",
                            lambda q, k, v, layout: seen.append(layout) or original(q, k, v, layout))
        out = pipe(**hv15_args(), generator=gen()).frames
    finally:
        pipe.dvg.restore()
    assert_verbose_allclose(out, ref, atol=ATTN_ATOL, rtol=1e-4, name="HV-1.5 enabled=False vs uncompiled")
    n_img = 9 * 8 * 12
    prompt = tp.hv15_prompt(1, negative=True)
    valid = {int(prompt[p + "prompt_embeds_mask"].sum() + prompt[p + "prompt_embeds_mask_2"].sum())
             for p in ("", "negative_")}
    # latent tokens + valid text only: the 729 masked T2V image tokens and the text padding are skipped
    assert {lay.segment_lengths[0] - n_img for lay in seen} == valid
    assert all(lay.seq_len == n_img + tp.HV15_IMAGE_TOKENS + tp.HV15_TEXT_LEN + tp.HV15_TEXT2_LEN for lay in seen)
    assert len(seen) == 2 * STEPS * pipe.transformer.config.num_layers  # cond + uncond per step


@pytest.mark.parametrize("hv15_timesteps", ["reference", "reshifted"])
def test_hv15_cfg_dvg_shapes_and_timesteps(hv15_cfg, parity_path, hv15_timesteps):
    pipe = hv15_cfg
    compile_pipeline(pipe, budget=0.5, hv15_timesteps=hv15_timesteps)
    calls, hook = record(pipe.transformer)
    try:
        out = pipe(**hv15_args(), generator=gen()).frames
    finally:
        hook.remove()
        report = pipe.dvg.last_report
        pipe.dvg.restore()
    executed = planner.executed_model_calls(STEPS)
    shapes = [tuple(s) for s in report["samples"][0]["stage_shapes"]]
    assert tuple(report["executed_model_calls"]) == executed and shapes[-1] == (9, 8, 12)
    per_step = [(s, n) for s, n in zip(shapes, executed) for _ in range(n)]
    # two model calls per step (the guider's cond and uncond batches), both at the stage's shape
    assert [tuple(h.shape[2:]) for h, _ in calls] == [s for s, _ in per_step for _ in range(2)]
    assert all(h.shape[1] == 2 * 4 + 1 for h, _ in calls)
    assert out.shape == (1, 4, 9, 8, 12)
    timesteps = [t for _, t in calls[::2]]
    config = next(c for c in json.loads((parity_path / "schedule.json").read_text())
                  if c["model"] == "hunyuan_video_1_5" and c["num_steps"] == STEPS and c["stage0_flow_shift"] == 7.0)
    if hv15_timesteps == "reference":
        # quirk Q5: the model keeps receiving the stage-0 timesteps after the re-shifts
        assert timesteps == [s["model_timestep"] for s in config["steps"]]
    else:
        stage_of = [k for k, n in enumerate(executed) for _ in range(n)]
        # a transition step's call still runs on the old schedule; afterwards the re-shifted one applies
        expected = [config["schedules"][k]["timesteps"][i] for i, k in enumerate(stage_of)]
        assert timesteps == pytest.approx(expected, abs=0) and timesteps != [s["model_timestep"] for s in config["steps"]]


def test_hv15_distilled_one_call_per_step_and_restore_bit_identical():
    pipe = tp.hv15_pipe(guidance_scale=1.0)
    pipe.set_progress_bar_config(disable=True)
    args = hv15_args(negative=False)
    ref = pipe(**args, generator=gen()).frames
    compile_pipeline(pipe, budget=0.5)
    calls, hook = record(pipe.transformer)
    try:
        pipe(**args, generator=gen())
    finally:
        hook.remove()
    assert len(calls) == STEPS
    pipe.dvg.restore()
    assert torch.equal(pipe(**args, generator=gen()).frames, ref)


# ---- image to video -----------------------------------------------------------------------------------------

def _check_frame0_condition(calls, shapes, executed, axes, channels, layout):
    """Frame 0 of each stage's condition is the full-resolution image latent sub-sampled on the stage's axes."""
    per_step = [k for k, n in enumerate(executed) for _ in range(n)]
    final = calls[-1][0]
    full_image = final[:, channels:2 * channels, 0] if layout == "concat" else final[:, :, 0]
    for (hidden, _), k in zip(calls, per_step):
        assert tuple(hidden.shape[2:]) == tuple(shapes[k])
        rows, cols = torch.tensor(axes[k][1]), torch.tensor(axes[k][2])
        expected = full_image.index_select(2, rows).index_select(3, cols)
        if layout == "concat":
            assert torch.equal(hidden[:, channels:2 * channels, 0], expected)
            assert not hidden[:, channels:2 * channels, 1:].any()
            mask = hidden[:, 2 * channels]
            assert bool((mask[:, 0] == 1).all()) and not mask[:, 1:].any()
        else:
            assert torch.equal(hidden[:, :, 0], expected)
    assert full_image.abs().sum() > 0


def test_hv15_i2v_keeps_frame0_condition_on_each_stage_grid():
    pipe = tp.hv15_i2v_pipe()
    pipe.set_progress_bar_config(disable=True)
    compile_pipeline(pipe, budget=0.5)
    calls, hook = record(pipe.transformer)
    try:
        pipe(image=tp.test_image(), **tp.hv15_prompt(1), num_frames=tp.FRAMES, num_inference_steps=STEPS,
             output_type="latent", generator=gen())
    finally:
        hook.remove()
    report = pipe.dvg.last_report
    grid = planner.FullGrid.from_dict(report["grid"])
    initial = planner.initial_plan(grid, STEPS, 0.5)
    sample = report["samples"][0]
    # stage 0 ran before planning: its condition uses the initial plan's axes (the reference's quirk Q12)
    axes = [initial.stage_axes[0]] + [tuple(a) for a in sample["stage_axes"][1:]]
    _check_frame0_condition(calls, sample["stage_shapes"], report["executed_model_calls"], axes, 4, "concat")


@pytest.mark.parametrize("condition_type", ["latent_concat", "token_replace"])
def test_hv_i2v_keeps_frame0_condition(condition_type):
    pipe = tp.hv_i2v_pipe(condition_type)
    pipe.set_progress_bar_config(disable=True)
    compile_pipeline(pipe, budget=0.5)
    calls, hook = record(pipe.transformer)
    try:
        out = pipe(image=tp.test_image(), **tp.hv_prompt(1), height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES,
                   num_inference_steps=STEPS, output_type="latent", generator=gen()).frames
    finally:
        hook.remove()
    report = pipe.dvg.last_report
    sample = report["samples"][0]
    initial = planner.initial_plan(planner.FullGrid.from_dict(report["grid"]), STEPS, 0.5)
    axes = [initial.stage_axes[0]] + [tuple(a) for a in sample["stage_axes"][1:]]  # stage 0 runs before planning
    _check_frame0_condition(calls, sample["stage_shapes"], report["executed_model_calls"], axes, 4,
                            "concat" if condition_type == "latent_concat" else "replace")
    if condition_type == "latent_concat":
        assert out.shape == (1, 4, 8, 16, 24)  # the pipeline drops the conditioning frame
    else:
        assert out.shape == (1, 4, 9, 16, 24)
        assert torch.equal(out[:, :, 0], calls[-1][0][:, :, 0])  # frame 0 pinned to the image latent


def test_hv15_per_sample_plans_packed_with_cfg_match_single_runs(hv15_cfg, monkeypatch):
    pipe = hv15_cfg
    demands = [{"spatial_demand": 1.0, "temporal_demand": 0.0}, {"spatial_demand": 0.0, "temporal_demand": 1.0}]
    prompt = tp.hv15_prompt(2, negative=True)
    layouts = []
    original = processors.packed_attention
    monkeypatch.setattr(processors, "packed_attention",
                        lambda q, k, v, layout: layouts.append(layout) or original(q, k, v, layout))
    compile_pipeline(pipe, budget=0.5, plan=demands)
    try:
        both = pipe(**prompt, **{k: v for k, v in hv15_args(negative=False).items() if "prompt" not in k},
                    generator=[gen(0), gen(1)]).frames
        shapes = [s["stage_shapes"] for s in pipe.dvg.last_report["samples"]]
        assert shapes[0] != shapes[1]
        packed = [lay for lay in layouts if lay.batch == 1]
        layers = pipe.transformer.config.num_layers
        assert len(packed) == 2 * layers * (STEPS - 4)  # cond + uncond, one packed stream each, after stage 0
        assert all(lay.cu_seqlens.numel() == 3 and lay.segment_lengths[0] != lay.segment_lengths[1] for lay in packed)
        monkeypatch.setattr(processors, "packed_attention", original)
        for b in range(2):
            compile_pipeline(pipe, plan=[demands[b]])
            single = {k: v[b:b + 1] for k, v in prompt.items()}
            alone = pipe(**single, **{k: v for k, v in hv15_args(negative=False).items() if "prompt" not in k},
                         generator=[gen(b)]).frames
            assert pipe.dvg.last_report["samples"][0]["stage_shapes"] == shapes[b]
            assert_verbose_allclose(both[b:b + 1], alone, atol=ATTN_ATOL, rtol=1e-4, name=f"HV-1.5 sample {b}")
    finally:
        pipe.dvg.restore()


@pytest.mark.parametrize("variant", ["hv15_i2v", "hv_latent_concat", "hv_token_replace"])
def test_i2v_enabled_false_matches_uncompiled(variant):
    """The I2V adapters' own preparation (image encode, conditioning layout, frame handling, decode rules)
    reproduces the pipeline exactly at full resolution."""
    if variant == "hv15_i2v":
        pipe = tp.hv15_i2v_pipe()
        args = dict(image=tp.test_image(), **tp.hv15_prompt(1), num_frames=tp.FRAMES, num_inference_steps=4,
                    output_type="latent")
    else:
        pipe = tp.hv_i2v_pipe(variant[3:])
        args = dict(image=tp.test_image(), **tp.hv_prompt(1), height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES,
                    num_inference_steps=4, output_type="latent")
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(**args, generator=gen()).frames
    compile_pipeline(pipe, enabled=False)
    out = pipe(**args, generator=gen()).frames
    assert_verbose_allclose(out, ref, atol=ATTN_ATOL, rtol=1e-4, name=f"{variant} enabled=False vs uncompiled")


def test_hv_i2v_per_sample_packed_matches_single_runs():
    pipe = tp.hv_i2v_pipe("latent_concat")
    pipe.set_progress_bar_config(disable=True)
    demands = [{"spatial_demand": 1.0, "temporal_demand": 0.0}, {"spatial_demand": 0.0, "temporal_demand": 1.0}]
    prompt = tp.hv_prompt(2)
    args = dict(image=tp.test_image(), height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES,
                num_inference_steps=STEPS, output_type="latent")
    compile_pipeline(pipe, budget=0.5, plan=demands)
    both = pipe(**prompt, **args, generator=[gen(0), gen(1)]).frames
    shapes = [s["stage_shapes"] for s in pipe.dvg.last_report["samples"]]
    assert shapes[0] != shapes[1]
    for b in range(2):
        compile_pipeline(pipe, plan=[demands[b]])
        alone = pipe(**{k: v[b:b + 1] for k, v in prompt.items()}, **args, generator=[gen(b)]).frames
        assert_verbose_allclose(both[b:b + 1], alone, atol=ATTN_ATOL, rtol=1e-4, name=f"HV I2V sample {b}")
