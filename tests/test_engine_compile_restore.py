"""`compile_blocks` with a mixed-plan batch (the blocks' compiled forward at stage 0, the packed forward's compiled
per-block computations after) leaves nothing behind: a pipeline sharing the transformer (from_pipe) gives, after
the DVG calls and after `restore()`, exactly the plain diffusers output, and the transformer's modules carry
the same instance attributes as before."""
import pytest
import torch
import torch._dynamo

import _tiny_pipes as tp

from dvg_engine.engine import compile_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GEOM = dict(height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES, num_inference_steps=4, output_type="latent")
DEMANDS = [{"spatial_demand": 1.0, "temporal_demand": 0.0}, {"spatial_demand": 0.0, "temporal_demand": 1.0}]


def _module_state(transformer):
    return {name: (sorted(m.__dict__), type(m).forward, getattr(m, "processor", None))
            for name, m in transformer.named_modules()}


def test_compiled_mixed_plan_call_leaves_shared_transformer_plain():
    from diffusers import HunyuanVideoPipeline
    torch._dynamo.reset()
    pipe = tp.hv_pipe(num_layers=2, num_single_layers=2)
    pipe.set_progress_bar_config(disable=True)
    prompt = tp.hv_prompt(2, valid_lengths=[9, 6])
    plain = pipe(**prompt, generator=tp.gens(2), **GEOM).frames
    before = _module_state(pipe.transformer)
    other = HunyuanVideoPipeline.from_pipe(pipe)
    other.set_progress_bar_config(disable=True)

    graphs = []
    compile_pipeline(pipe, budget=0.5, plan=DEMANDS,
                     compile_blocks={"backend": lambda gm, ex: graphs.append(1) or gm.forward, "fullgraph": True})
    pipe(**prompt, generator=tp.gens(2), **dict(GEOM, num_inference_steps=tp.STEPS))
    samples = pipe.dvg.last_report["samples"]
    assert samples[0]["stage_shapes"] != samples[1]["stage_shapes"] and graphs  # packed and compiled
    # the shared transformer between DVG calls: the plain forward, bit for bit
    assert torch.equal(other(**prompt, generator=tp.gens(2), **GEOM).frames, plain)
    pipe.dvg.restore()
    assert _module_state(pipe.transformer) == before
    assert torch.equal(pipe(**prompt, generator=tp.gens(2), **GEOM).frames, plain)
