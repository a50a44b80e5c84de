"""The per-sample packed forward (samples of one batch on different plans, one varlen stream per step) where it
used to fall back to one transformer forward per plan group: a LoRA `scale` in `attention_kwargs`, and
HunyuanVideo I2V's `token_replace` conditioning (frame 0 modulated with timestep 0, per segment). Each sample
of the packed batch must equal that sample run alone (the transformer's own forward), within the attention
tolerance."""
import pytest
import torch

import _tiny_pipes as tp
from _tolerances import assert_verbose_allclose

from dvg_engine import processors
from dvg_engine.engine import compile_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GEOM = dict(height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES, num_inference_steps=tp.STEPS,
            output_type="latent")
DEMANDS = [{"spatial_demand": 1.0, "temporal_demand": 0.0}, {"spatial_demand": 0.0, "temporal_demand": 1.0}]
ATTN_ATOL = 2e-4  # fp32 model; packing changes only the summation order of the attention


def _record_layouts(monkeypatch):
    layouts = []
    original = processors.packed_attention
    monkeypatch.setattr(processors, "packed_attention",
                        lambda q, k, v, layout: layouts.append(layout) or original(q, k, v, layout))
    return layouts, lambda: monkeypatch.setattr(processors, "packed_attention", original)


def _check_packed_after_stage0(pipe, layouts, conditions=1):
    """Stage 0 (4 steps) runs both samples as one padded batch; from stage 1 on, every layer of every step
    (and condition, under CFG) attends over one packed stream of two unequal segments."""
    transformer = pipe.transformer
    layers = transformer.config.num_layers + getattr(transformer.config, "num_single_layers", 0)
    packed = [layout for layout in layouts if layout.batch == 1]
    assert len(packed) == conditions * layers * (tp.STEPS - 4) and len(layouts) == conditions * layers * tp.STEPS
    assert all(layout.cu_seqlens.numel() == 3 and layout.segment_lengths[0] != layout.segment_lengths[1]
               for layout in packed)


def _lora_case(model):
    """(pipe, batch-of-2 prompt, call arguments) for the LoRA test: HunyuanVideo, or HunyuanVideo-1.5 with CFG."""
    if model == "hv":
        return tp.hv_pipe(), tp.hv_prompt(2, valid_lengths=[9, 6]), dict(GEOM)
    return tp.hv15_pipe(guidance_scale=4.0), tp.hv15_prompt(2, negative=True), dict(GEOM)


@pytest.mark.parametrize("model", ["hv", "hv15_cfg"])
def test_lora_scale_runs_packed_and_matches_single_runs(monkeypatch, model):
    pytest.importorskip("peft")
    from peft import LoraConfig
    pipe, prompt, args = _lora_case(model)
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "proj_out"],
                                            init_lora_weights=False))
    compile_pipeline(pipe, budget=0.5, plan=DEMANDS)
    layouts, stop_recording = _record_layouts(monkeypatch)
    both = pipe(**prompt, attention_kwargs={"scale": 0.5}, generator=tp.gens(2), **args).frames
    stop_recording()
    shapes = [s["stage_shapes"] for s in pipe.dvg.last_report["samples"]]
    assert shapes[0] != shapes[1]
    _check_packed_after_stage0(pipe, layouts, conditions=2 if model == "hv15_cfg" else 1)
    for b in range(2):
        compile_pipeline(pipe, plan=[DEMANDS[b]])
        single = {k: v[b:b + 1] for k, v in prompt.items()}
        alone = pipe(**single, attention_kwargs={"scale": 0.5}, generator=tp.gens(1, seed=b), **args).frames
        assert pipe.dvg.last_report["samples"][0]["stage_shapes"] == shapes[b]
        assert_verbose_allclose(both[b:b + 1], alone, atol=ATTN_ATOL, rtol=1e-4, name=f"LoRA scale 0.5, sample {b}")
    # the scale matters at this size (so the comparison above could fail), and it was undone after each call
    full_scale = pipe(**single, generator=tp.gens(1, seed=1), **args).frames
    assert (full_scale - alone).abs().max() > 100 * ATTN_ATOL
    compile_pipeline(pipe, plan=DEMANDS)
    again = pipe(**prompt, generator=tp.gens(2), **args).frames
    assert_verbose_allclose(again[1:], full_scale, atol=ATTN_ATOL, rtol=1e-4, name="scale 1 after scaled calls")


def test_hv_i2v_token_replace_runs_packed_and_matches_single_runs(monkeypatch):
    pipe = tp.hv_i2v_pipe("token_replace")
    pipe.set_progress_bar_config(disable=True)
    prompt = tp.hv_prompt(2)
    args = dict(image=tp.test_image(), height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES,
                num_inference_steps=tp.STEPS, output_type="latent")
    compile_pipeline(pipe, budget=0.5, plan=DEMANDS)
    layouts, stop_recording = _record_layouts(monkeypatch)
    both = pipe(**prompt, **args, generator=tp.gens(2)).frames
    stop_recording()
    shapes = [s["stage_shapes"] for s in pipe.dvg.last_report["samples"]]
    assert shapes[0] != shapes[1]
    _check_packed_after_stage0(pipe, layouts)
    for b in range(2):
        compile_pipeline(pipe, plan=[DEMANDS[b]])
        alone = pipe(**{k: v[b:b + 1] for k, v in prompt.items()}, **args, generator=tp.gens(1, seed=b)).frames
        assert pipe.dvg.last_report["samples"][0]["stage_shapes"] == shapes[b]
        # frame 0 is pinned to the image latent; the other frames carry the frame-0 modulation through attention
        assert_verbose_allclose(both[b:b + 1], alone, atol=ATTN_ATOL, rtol=1e-4, name=f"token_replace sample {b}")


def test_token_replace_packed_forward_matches_transformer_per_sample():
    """One forward, no sampling loop: the packed forward's per-sample velocities against the transformer's own
    forward on each sample alone, for two samples with different grids — including one whose grid has a
    single frame (its [frame 0, rest] split leaves an empty second segment)."""
    pipe = tp.hv_i2v_pipe("token_replace")
    transformer = pipe.transformer
    state = processors.install(transformer, "hunyuan_video")
    try:
        prompt = tp.hv_prompt(2, valid_lengths=[9, 6])
        gen = torch.Generator().manual_seed(5)
        hidden = [torch.randn(1, 4, 3, 8, 12, generator=gen), torch.randn(1, 4, 1, 6, 10, generator=gen)]
        timestep = torch.tensor([700.0, 300.0])
        guidance = torch.tensor([6000.0, 6000.0])
        kwargs = dict(encoder_hidden_states=prompt["prompt_embeds"], encoder_attention_mask=prompt["prompt_attention_mask"],
                      pooled_projections=prompt["pooled_prompt_embeds"], guidance=guidance)
        with torch.no_grad():
            packed = processors.PackedHunyuanVideoForward(transformer, state)(hidden, timestep, [9, 6], **kwargs)
            for b in range(2):
                alone = transformer(hidden_states=hidden[b], timestep=timestep[b:b + 1],
                                    **{k: v[b:b + 1] for k, v in kwargs.items()}, return_dict=False)[0]
                assert packed[b].shape == alone.shape
                assert_verbose_allclose(packed[b], alone, atol=ATTN_ATOL, rtol=1e-4, name=f"sample {b}")
    finally:
        processors.uninstall(transformer)
