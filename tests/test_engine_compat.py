"""Engine compatibility: diffusers cache hooks, the batch plan scope, true CFG, outputs through the VAE, a
save_pretrained/from_pretrained round trip, bounded memory over repeated calls, the progress bar, and the
GPU/optional-package paths (torch.compile of the blocks, model CPU offload, LoRA) that skip without them."""
import gc
import json
import os

import pytest
import torch

import _tiny_pipes as tp
from _tolerances import assert_verbose_allclose

from dvg_engine import processors
from dvg_engine.engine import compile_pipeline
from _tiny_pipes import gens  # noqa: F401  (also the fixtures hv / fresh_hv, in conftest.py)

# tiny tensors: torch's intra-op threads only add spin-wait on the shared CI cores (see conftest)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

GEOM = dict(height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES, num_inference_steps=tp.STEPS,
            output_type="latent")




def test_first_block_cache_reset_at_every_transition(fresh_hv, monkeypatch):
    from diffusers import FirstBlockCacheConfig
    pipe = fresh_hv
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.0))  # threshold 0: never skips a block
    forwards, resets = [], []
    original = type(pipe.transformer)._reset_stateful_cache
    monkeypatch.setattr(type(pipe.transformer), "_reset_stateful_cache",
                        lambda self, recurse=True: resets.append(len(forwards)) or original(self, recurse))
    hook = pipe.transformer.register_forward_pre_hook(lambda *a: forwards.append(1))
    compile_pipeline(pipe, budget=0.5)
    try:
        with_cache = pipe(**tp.hv_prompt(1), generator=gens(1), **GEOM).frames
    finally:
        hook.remove()
    # at the start, after the model call of each transition step (3, 6, 8) and diffusers' own reset at the end
    assert resets == [0, 4, 7, 9, tp.STEPS]
    pipe.transformer.disable_cache()
    plain = pipe(**tp.hv_prompt(1), generator=gens(1), **GEOM).frames
    assert_verbose_allclose(with_cache, plain, atol=1e-5, name="FirstBlockCache(threshold=0) vs no cache")


def test_first_block_cache_with_per_sample_plans(fresh_hv):
    from diffusers import FirstBlockCacheConfig
    pipe = fresh_hv
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    compile_pipeline(pipe, budget=0.5, plan=[{"spatial_demand": 1.0, "temporal_demand": 0.0},
                                             {"spatial_demand": 0.0, "temporal_demand": 1.0}])
    out = pipe(**tp.hv_prompt(2), generator=gens(2), **GEOM).frames
    shapes = [s["stage_shapes"] for s in pipe.dvg.last_report["samples"]]
    assert shapes[0] != shapes[1] and torch.isfinite(out).all()


def test_taylorseer_cache_runs_across_stage_changes(fresh_hv):
    from diffusers import TaylorSeerCacheConfig
    pipe = fresh_hv
    # predictions start after step 3 (the first transition) and are refreshed every 2 steps: without the reset
    # at each transition, a Taylor prediction made on one stage's grid would be applied to the next one
    pipe.transformer.enable_cache(TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1,
                                                        taylor_factors_dtype=torch.float32))
    compile_pipeline(pipe, budget=0.5)
    out = pipe(**tp.hv_prompt(1), generator=gens(1), **GEOM).frames
    assert out.shape == (1, 4, 9, 16, 24) and torch.isfinite(out).all()


def test_diffusers_version_is_checked(monkeypatch):
    import diffusers
    from dvg_engine import engine
    monkeypatch.setattr(diffusers, "__version__", "0.31.0")
    with pytest.raises(ImportError, match=r"supports diffusers >=0\.35,<0\.43.*found diffusers 0\.31\.0"):
        engine._check_diffusers_version()
    monkeypatch.setattr(diffusers, "__version__", "0.42.1")
    assert engine._check_diffusers_version() == "0.42.1"


def test_plan_scope_batch_pools_demands_into_one_plan(fresh_hv):
    pipe = compile_pipeline(fresh_hv, budget=0.5, plan_scope="batch")
    pipe(**tp.hv_prompt(2), generator=gens(2, seed=5), **GEOM)
    samples = pipe.dvg.last_report["samples"]
    assert samples[0]["plan"] == samples[1]["plan"] and samples[0]["demands"] == samples[1]["demands"]
    compile_pipeline(pipe, plan_scope="sample")
    pipe(**tp.hv_prompt(2), generator=gens(2, seed=5), **GEOM)
    samples = pipe.dvg.last_report["samples"]
    assert samples[0]["demands"] != samples[1]["demands"]  # each sample's own x̂0


def test_true_cfg_and_num_videos_per_prompt(fresh_hv):
    pipe = compile_pipeline(fresh_hv, budget=0.5)
    prompt = tp.hv_prompt(1)
    negative = tp.hv_prompt(1, seed=9)
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["hidden_states"].shape[0]),
                                                      with_kwargs=True)
    try:
        out = pipe(**prompt, negative_prompt_embeds=negative["prompt_embeds"],
                   negative_pooled_prompt_embeds=negative["pooled_prompt_embeds"],
                   negative_prompt_attention_mask=negative["prompt_attention_mask"], true_cfg_scale=4.0,
                   num_videos_per_prompt=2, generator=gens(2), **GEOM).frames
    finally:
        hook.remove()
    assert out.shape[0] == 2 and calls == [2] * (2 * tp.STEPS)  # cond + uncond per step, 2 videos each


def test_decoded_output_and_return_dict(fresh_hv):
    pipe = compile_pipeline(fresh_hv, budget=0.5)
    args = dict(GEOM, output_type="pt", return_dict=False)
    (video,) = pipe(**tp.hv_prompt(1), generator=gens(1), **args)
    assert video.shape == (1, tp.FRAMES, 3, tp.HEIGHT, tp.WIDTH) and torch.isfinite(video).all()


def test_save_pretrained_from_pretrained_round_trip(tmp_path):
    from diffusers import HunyuanVideoPipeline
    tp.hv_pipe(seed=4).save_pretrained(tmp_path / "tiny-hv")
    pipe = HunyuanVideoPipeline.from_pretrained(tmp_path / "tiny-hv", text_encoder=None, tokenizer=None,
                                                text_encoder_2=None, tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(**tp.hv_prompt(1), generator=gens(1), **dict(GEOM, num_inference_steps=2)).frames
    compile_pipeline(pipe, budget=0.5)
    out = pipe(**tp.hv_prompt(1), generator=gens(1), **GEOM).frames
    assert out.shape == ref.shape == (1, 4, 9, 16, 24)
    pipe.save_pretrained(tmp_path / "compiled")  # a compiled pipeline saves as its own class
    assert json.loads((tmp_path / "compiled" / "model_index.json").read_text())["_class_name"] == "HunyuanVideoPipeline"
    pipe.dvg.restore()
    assert torch.equal(pipe(**tp.hv_prompt(1), generator=gens(1), **dict(GEOM, num_inference_steps=2)).frames, ref)


def test_progress_bar_shows_stage_and_grid(fresh_hv, capsys):
    pipe = compile_pipeline(fresh_hv, budget=0.5)
    pipe.set_progress_bar_config(disable=False, ascii=True, mininterval=0)
    try:
        pipe(**tp.hv_prompt(1), generator=gens(1), **GEOM)
    finally:
        pipe.set_progress_bar_config(disable=True)
    err = capsys.readouterr().err
    shapes = pipe.dvg.last_report["samples"][0]["stage_shapes"]
    for k, shape in enumerate(shapes):
        assert f"DVG stage {k} grid {'x'.join(map(str, shape))}" in err


def test_memory_bounded_over_repeated_calls(fresh_hv):
    psutil = pytest.importorskip("psutil")
    pipe = compile_pipeline(fresh_hv, budget=0.5)
    args = dict(GEOM, height=64, width=96, num_frames=17, num_inference_steps=6)
    compile_pipeline(pipe, budget=0.5, allow_fewer_stages=True)
    process = psutil.Process(os.getpid())
    rss = {}
    for call in range(1, 21):
        pipe(**tp.hv_prompt(1), generator=gens(1), **args)
        if call in (5, 20):
            gc.collect()
            rss[call] = process.memory_info().rss
    assert rss[20] <= rss[5] + 50 * 2 ** 20, f"RSS grew {(rss[20] - rss[5]) / 2 ** 20:.1f} MB from call 5 to 20"


# ---- paths that need a GPU or optional packages ----------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_compile_blocks_once_per_stage_shape_cuda():
    """Inductor on CUDA (the CPU twin with a counting backend: tests/test_engine_compile.py): graphs are compiled
    at the first step of each stage only, the same number at each, and none on a second call."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    pipe = tp.hv_pipe().to("cuda")
    pipe.set_progress_bar_config(disable=True)
    compile_pipeline(pipe, budget=0.5, compile_blocks=True)
    counters.clear()
    during = []
    pre = pipe.transformer.register_forward_pre_hook(lambda m, a: during.append(counters["stats"]["unique_graphs"]))
    post = pipe.transformer.register_forward_hook(
        lambda m, a, out: during.append(counters["stats"]["unique_graphs"] - during.pop()))
    prompt = {k: v.to("cuda") for k, v in tp.hv_prompt(1).items()}  # precomputed embeddings are not moved for us
    try:
        pipe(**prompt, generator=torch.Generator("cuda").manual_seed(0), **GEOM)
        frames = counters["stats"]["unique_graphs"]
        pipe(**prompt, generator=torch.Generator("cuda").manual_seed(0), **GEOM)
    finally:
        pre.remove()
        post.remove()
    executed = pipe.dvg.last_report["executed_model_calls"]
    stage_starts = [sum(executed[:k]) for k in range(4)]
    per_step = during[:tp.STEPS]
    assert per_step[0] > 0 and per_step == [per_step[0] if i in stage_starts else 0 for i in range(tp.STEPS)], per_step
    assert counters["stats"]["unique_graphs"] == frames  # the second call reuses every compiled shape
    assert all("_compiled_call_impl" not in b.__dict__ for b in pipe.transformer.transformer_blocks)


@needs_cuda
def test_model_cpu_offload_cuda():
    pytest.importorskip("accelerate")
    pipe = tp.hv_pipe()
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_model_cpu_offload()
    compile_pipeline(pipe, budget=0.5)
    # on the execution device: accelerate's CpuOffload (1.15 here) moves the inputs only when it moves the model, so
    # host embeddings would meet the CUDA transformer from the second step on
    out = pipe(**{k: v.to("cuda") for k, v in tp.hv_prompt(1).items()}, generator=gens(1), **GEOM).frames
    assert out.shape == (1, 4, 9, 16, 24) and torch.isfinite(out).all()


def test_model_cpu_offload_hooks_on_cpu():
    """accelerate's offload hooks (installed with device="cpu", so they run without a GPU) wrap the models'
    forwards: DVG still runs, through the hooked forward, and gives what the same pipeline gives without them."""
    pytest.importorskip("accelerate")
    plan = {"spatial_demand": 0.3, "temporal_demand": 0.3}
    plain = tp.hv_pipe()
    plain.set_progress_bar_config(disable=True)
    compile_pipeline(plain, budget=0.5, plan=plan)
    expected = plain(**tp.hv_prompt(1), generator=gens(1), **GEOM).frames
    pipe = tp.hv_pipe()
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_model_cpu_offload(device="cpu")
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda m, a: calls.append(1))
    compile_pipeline(pipe, budget=0.5, plan=plan)
    out = pipe(**tp.hv_prompt(1), generator=gens(1), **GEOM).frames
    assert hasattr(pipe.transformer, "_hf_hook")  # the offload hook is really installed
    assert len(calls) == tp.STEPS  # the DVG loop went through the hooked transformer forward
    assert_verbose_allclose(out, expected, atol=1e-5, rtol=1e-5)
    assert pipe.dvg.last_report["samples"][0]["stage_shapes"] == plain.dvg.last_report["samples"][0]["stage_shapes"]


@pytest.mark.parametrize("order", ["before", "after"])
def test_lora_loaded_before_or_after_compile(order):
    pytest.importorskip("peft")
    from peft import LoraConfig
    pipe = tp.hv_pipe()
    pipe.set_progress_bar_config(disable=True)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False)
    if order == "before":
        pipe.transformer.add_adapter(config)
    compile_pipeline(pipe, budget=0.5, plan={"spatial_demand": 0.3, "temporal_demand": 0.3})
    if order == "after":
        pipe.transformer.add_adapter(config)
    with_lora = pipe(**tp.hv_prompt(1), generator=gens(1), **GEOM).frames
    pipe.transformer.disable_adapters()
    without = pipe(**tp.hv_prompt(1), generator=gens(1), **GEOM).frames
    assert not torch.allclose(with_lora, without)  # the adapter is active inside the DVG forward
    assert all(isinstance(p, processors.DVGAttnProcessor)
               for n, p in pipe.transformer.attn_processors.items() if not n.startswith("context_embedder."))
