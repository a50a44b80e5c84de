"""Host->device copies stay out of the step loop (each `torch.tensor(host values)` / `.to(device)` is a blocking
copy, i.e. a stream sync, once the device is CUDA). Counted on CPU as the `torch.tensor` / `torch.as_tensor`
calls a module makes during a generation: the same for 12 and 20 steps.

* HunyuanVideo I2V: the per-sample image latent on each stage's axes (the transformer input's condition, and
  token_replace's pinned frame 0 after each step) is gathered once per (stage, sample group), per plan group
  (one plan for the batch) and on the packed mixed-plan path;
* the per-group path (mixed plans with a diffusers cache hook): each condition's per-group slice is built once;
* MeanFlow checkpoints (HunyuanVideo-1.5 `use_meanflow`): `timestep_r` comes from the stage's device timesteps,
  and is the next step's model timestep (0 at the last step)."""
import pytest
import torch

import _tiny_pipes as tp

from dvg_engine import adapters
from dvg_engine.engine import compile_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEMANDS = [{"spatial_demand": 1.0, "temporal_demand": 0.0}, {"spatial_demand": 0.0, "temporal_demand": 1.0}]


class _CountingTorch:
    """Stands in for `torch` inside one dvg_engine module: counts `torch.tensor` / `torch.as_tensor` calls,
    delegates everything."""

    def __init__(self) -> None:
        self.tensor_calls = 0

    def tensor(self, *args, **kwargs):
        self.tensor_calls += 1
        return torch.tensor(*args, **kwargs)

    def as_tensor(self, *args, **kwargs):
        self.tensor_calls += 1
        return torch.as_tensor(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(torch, name)


def _calls_at_12_and_20_steps(pipe, monkeypatch, run, mixed: bool):
    """`torch.tensor`/`as_tensor` calls the adapters make in one generation of 12 and of 20 steps (`run(steps)`
    generates), checking each time whether the samples got different plans (`mixed`)."""
    counting = _CountingTorch()
    monkeypatch.setattr(adapters, "torch", counting)
    counts = []
    try:
        for steps in (12, 20):
            before = counting.tensor_calls
            run(steps)
            counts.append(counting.tensor_calls - before)
            shapes = [s["stage_shapes"] for s in pipe.dvg.last_report["samples"]]
            assert (shapes[0] != shapes[1]) == mixed
    finally:
        pipe.dvg.restore()
    assert counts[0] > 0  # the count does see the adapter's copies
    assert counts[0] == counts[1], f"adapter torch.tensor calls: {counts[0]} at 12 steps vs {counts[1]} at 20 steps"


@pytest.mark.parametrize("mode", ["latent_concat", "token_replace"])
@pytest.mark.parametrize("scope", ["batch", "mixed"])
def test_i2v_image_condition_is_not_rebuilt_per_step(monkeypatch, mode, scope):
    pipe = tp.hv_i2v_pipe(mode)
    pipe.set_progress_bar_config(disable=True)
    plan = dict(plan_scope="batch") if scope == "batch" else dict(plan=DEMANDS)
    compile_pipeline(pipe, budget=0.5, **plan)
    _calls_at_12_and_20_steps(pipe, monkeypatch, lambda steps: pipe(
        **tp.hv_prompt(2), image=tp.test_image(), height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES,
        num_inference_steps=steps, output_type="latent", generator=tp.gens(2)), mixed=scope == "mixed")


def test_per_group_path_selects_each_condition_once_per_group(monkeypatch):
    """Mixed plans with a diffusers cache hook on the transformer run one forward per plan group (the packed
    forward would bypass the hook): each condition's per-group slice (`Condition.select`) is built once, not per
    step."""
    from diffusers import FirstBlockCacheConfig
    from dvg_engine import engine
    pipe = tp.hv_pipe()
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.0))  # threshold 0: never skips a block
    assert engine._has_forward_hooks(pipe.transformer)  # so the per-group path runs
    compile_pipeline(pipe, budget=0.5, plan=DEMANDS)
    _calls_at_12_and_20_steps(pipe, monkeypatch, lambda steps: pipe(
        **tp.hv_prompt(2), height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES, num_inference_steps=steps,
        output_type="latent", generator=tp.gens(2)), mixed=True)


def test_meanflow_timestep_r_from_stage_timesteps(monkeypatch):
    from diffusers import HunyuanVideo15Transformer3DModel
    from dvg_engine import engine
    pipe = tp.hv15_pipe()
    config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    torch.manual_seed(0)
    pipe.register_modules(transformer=HunyuanVideo15Transformer3DModel(**dict(config, use_meanflow=True)).eval())
    pipe.set_progress_bar_config(disable=True)
    calls = []
    pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: calls.append((kw["timestep"].clone(), kw["timestep_r"].clone())), with_kwargs=True)
    compile_pipeline(pipe, budget=0.5, plan_scope="batch")
    counting = _CountingTorch()
    monkeypatch.setattr(engine, "torch", counting)
    counts = []
    try:
        for steps in (12, 20):
            calls.clear()
            before = counting.tensor_calls
            pipe(**tp.hv15_prompt(2), height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES,
                 num_inference_steps=steps, output_type="latent", generator=tp.gens(2))
            counts.append(counting.tensor_calls - before)
            assert len(calls) == steps
            transitions = {sum(pipe.dvg.last_report["executed_model_calls"][:k]) - 1 for k in (1, 2, 3)}
            for i in range(steps - 1):
                if i not in transitions:  # a transition re-shifts the schedule the next step reads
                    assert torch.equal(calls[i][1], calls[i + 1][0].to(calls[i][1].dtype)), i
            assert not calls[-1][1].any()
    finally:
        pipe.dvg.restore()
    assert counts[0] == counts[1], f"engine tensor copies: {counts[0]} at 12 steps vs {counts[1]} at 20 steps"
