"""The engine's transitions against a step-by-step replay through `sampling.transition` (the parity recipe),
with a low-precision model: quirk Q14 (dvg-spec §12.3 step 4) rounds the resized x̂0 to the dtype of the
latents entering the transition, which differs from float32 only when the previous step was itself a
transition (the engine then holds latents cast to the model dtype). 5 steps put transitions at steps 1, 2, 3.
"""
import copy

import pytest
import torch

import _tiny_pipes as tp
from _backends import CUDA_ID, device_for
from _tolerances import assert_verbose_allclose

from dvg_engine import sampling
from dvg_engine.engine import compile_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 5
GEOM = dict(height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES, num_inference_steps=STEPS, output_type="latent")
DEMANDS = [{"spatial_demand": 1.0, "temporal_demand": 0.0}, {"spatial_demand": 0.0, "temporal_demand": 1.0}]


@pytest.fixture(scope="module", params=["cpu", "cuda"], ids=["cpu", CUDA_ID])
def hv_bf16(request):
    """The tiny HV pipeline with a bf16 transformer (the VAE is not used: latents out), on CPU and on CUDA (the
    simulated device of `_cuda_sim` without a GPU)."""
    with device_for(request.param) as device:
        pipe = tp.hv_pipe().to(device)
        pipe.transformer.to(torch.bfloat16)
        pipe.set_progress_bar_config(disable=True)
        yield pipe
        if "dvg" in pipe.__dict__:
            pipe.dvg.restore()


def _stand_in(hidden: torch.Tensor) -> torch.Tensor:
    x = hidden.float()
    return (0.3 * torch.roll(x, 1, dims=4) - 0.2 * x).to(hidden.dtype)  # in the model dtype, like the model's


@pytest.mark.parametrize("batch", [1, 2], ids=["one_sample", "two_plans"])
def test_back_to_back_transitions_round_x0_up_to_the_latents_dtype(hv_bf16, batch, monkeypatch):
    """A stand-in velocity makes every step reproducible; the latents after each step come from the callback.
    Each transition's output must equal `sampling.transition` on the same inputs bit for bit — including the
    1→2 and 2→3 ones, entered with bf16 latents. With two samples on different plans the later steps run the
    packed per-sample forward, whose velocities are replaced by the same stand-in."""
    from dvg_engine import processors
    pipe = compile_pipeline(hv_bf16, budget=0.6, plan=DEMANDS[:batch] if batch > 1 else None)
    velocities, after = [], []  # per step: per-sample velocities; per-sample latents after the step

    def velocity(module, args, kwargs, output):
        v = _stand_in(kwargs["hidden_states"])
        velocities.append([v[b:b + 1] for b in range(v.shape[0])])
        return (v,)

    def packed(self, hidden_list, timestep, text_lengths, **kwargs):
        velocities.append([_stand_in(h) for h in hidden_list])
        return list(velocities[-1])

    def callback(p, i, t, kw):
        latents = kw["latents"]
        after.append([latents[b:b + 1].clone() for b in range(batch)] if isinstance(latents, torch.Tensor)
                     else [x.clone() for x in latents])
        return {}

    monkeypatch.setattr(processors.PackedHunyuanVideoForward, "__call__", packed)
    hook = pipe.transformer.register_forward_hook(velocity, with_kwargs=True)
    try:
        device = pipe.transformer.device
        prompt = {k: v.to(device) for k, v in tp.hv_prompt(batch).items()}
        pipe(**prompt, generator=tp.gens(batch), callback_on_step_end=callback, **GEOM)
    finally:
        hook.remove()
    report = pipe.dvg.last_report
    assert report["transition_steps"] == [1, 2, 3] and len(velocities) == len(after) == STEPS
    # the case under test: the latents entering transitions 2 and 3 are the bf16 output of the previous one
    assert after[0][0].dtype == torch.float32 and after[1][0].dtype == after[2][0].dtype == torch.bfloat16
    if batch > 1:
        assert report["samples"][0]["stage_shapes"] != report["samples"][1]["stage_shapes"]
    schedule = sampling.StageSchedule(STEPS, "hunyuan_video", 7.0)
    for step, stage in ((1, 0), (2, 1), (3, 2)):
        for b in range(batch):
            sample = report["samples"][b]
            axes = [tuple(tuple(a) for a in stage_axes) for stage_axes in sample["stage_axes"]]
            # the schedule is shared by the batch: each sample replays this step's bookkeeping on a copy
            expected = sampling.transition(after[step - 1][b], velocities[step][b], schedule=copy.deepcopy(schedule),
                                           step=step, plan_axes=(axes[stage], axes[stage + 1]),
                                           target_shape=sample["stage_shapes"][stage + 1], channels=4, seeds=12345,
                                           out_dtype=torch.bfloat16)
            got = after[step][b]
            assert got.dtype == torch.bfloat16 and got.shape == expected.shape
            if step == 1 and got.is_cuda:
                # float32 latents: the fused Triton op, whose fp64 log/cos (libdevice) may differ from torch's
                # in the last bit, so the bf16 result may be one unit off
                assert_verbose_allclose(got.float(), expected.float(), atol=1e-6, rtol=2 ** -7,
                                        name=f"CUDA transition at step {step}, sample {b}")
                continue
            mismatched = int((got != expected).sum())
            assert mismatched == 0, f"transition at step {step}, sample {b}: {mismatched} of {got.numel()} values differ"
        schedule.begin_transition(step)
