"""`compile_blocks` on CPU: torch.compile of the transformer blocks compiles once per stage shape (and block
class), never per step, and nothing on a second call with the same plan. A counting backend (Dynamo hands it
each graph it compiles; it runs the graph eagerly) makes this cheap enough for CI; the inductor path on CUDA
is tests/test_engine_compat.py::test_compile_blocks_once_per_stage_shape_cuda."""
import inspect
import json

import pytest
import torch
import torch._dynamo

import _tiny_pipes as tp
from _tolerances import assert_verbose_allclose

from dvg_engine import DVGConfig
from dvg_engine.engine import compile_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GEOM = dict(height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES, num_inference_steps=tp.STEPS,
            output_type="latent")


class CountingBackend:
    """A torch.compile backend that records every graph Dynamo compiles and runs it as traced (eagerly)."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def test_compile_blocks_once_per_stage_shape_and_block_class_never_per_step():
    torch._dynamo.reset()  # graphs cached by earlier tests (same block classes) would hide the compiles
    # two blocks of each class: instances of one class must share their graph, or the 60 blocks of the real
    # model would run into Dynamo's recompile limit (8 per code object) and silently fall back to eager
    pipe = tp.hv_pipe(num_layers=2, num_single_layers=2)
    pipe.set_progress_bar_config(disable=True)
    eager = compile_pipeline(pipe, budget=0.5)(**tp.hv_prompt(1), generator=tp.gens(1), **GEOM).frames
    backend = CountingBackend()
    compile_pipeline(pipe, compile_blocks={"backend": backend})
    during = []
    pre = pipe.transformer.register_forward_pre_hook(lambda m, a: during.append(backend.graphs))
    post = pipe.transformer.register_forward_hook(lambda m, a, out: during.append(backend.graphs - during.pop()))
    try:
        compiled = pipe(**tp.hv_prompt(1), generator=tp.gens(1), **GEOM).frames
        first_call = backend.graphs
        pipe(**tp.hv_prompt(1), generator=tp.gens(1), **GEOM)
    finally:
        pre.remove()
        post.remove()
    report = pipe.dvg.last_report
    executed = report["executed_model_calls"]
    stage_starts = [sum(executed[:k]) for k in range(4)]
    per_step = during[:tp.STEPS]
    assert len({tuple(s) for s in report["samples"][0]["stage_shapes"]}) == 4
    # graphs are compiled only at the first step of each stage, the same number at each. Per shape: one for
    # the dual-stream blocks, and two for the single-stream ones (the first gets the dual stream's contiguous
    # output, the others a slice of a wider tensor, and dynamic=False guards on strides): fewer than the four
    # block instances, because instances of one class share their graphs.
    per_stage = per_step[0]
    assert per_step == [per_stage if i in stage_starts else 0 for i in range(tp.STEPS)], (per_step, stage_starts)
    assert 2 <= per_stage <= 3 and first_call == 4 * per_stage
    assert backend.graphs == first_call and during[tp.STEPS:] == [0] * tp.STEPS  # the second call compiles nothing
    assert all("_compiled_call_impl" not in b.__dict__
               for b in list(pipe.transformer.transformer_blocks) + list(pipe.transformer.single_transformer_blocks))
    assert_verbose_allclose(compiled, eager, atol=1e-5, rtol=1e-5, name="compiled blocks vs eager")
    json.dumps(report)  # the config in the report names the callable backend instead of embedding it
    assert report["config"]["compile_blocks"]["backend"].endswith("test_engine_compile.CountingBackend")

    # a second plan: its new stage shapes compile too (torch's default recompile limit of 8 graphs per code
    # object would already be spent by the single-stream blocks on the first plan, and they would run eagerly)
    if "recompile_limit" in inspect.signature(torch.compile).parameters:
        shapes = {tuple(s) for s in report["samples"][0]["stage_shapes"]}
        compile_pipeline(pipe, plan={"spatial_demand": 0.0, "temporal_demand": 1.0})
        before = backend.graphs
        pipe(**tp.hv_prompt(1), generator=tp.gens(1), **GEOM)
        new_shapes = {tuple(s) for s in pipe.dvg.last_report["samples"][0]["stage_shapes"]} - shapes
        assert new_shapes and backend.graphs - before == per_stage * len(new_shapes)
    pipe.dvg.restore()


@pytest.mark.parametrize("value,message", [
    ({"dynamic": True}, "sets 'dynamic'.*dynamic=False"),
    ({"backnd": "eager"}, "unknown key 'backnd'.*allowed keys: \\['backend', 'mode', 'options', 'fullgraph', 'disable', "
                              "'recompile_limit'\\]"),
    ({"backend": 3}, "compile_blocks\\['backend'\\]=3 is invalid"),
    ({"mode": "max-autotune", "options": {"x": 1}}, "both 'mode' and 'options'"),
    ({"options": "fast"}, "compile_blocks\\['options'\\]='fast' is invalid"),
    ({"fullgraph": 1}, "compile_blocks\\['fullgraph'\\]=1 is not a bool"),
    ({"recompile_limit": 0}, "compile_blocks\\['recompile_limit'\\]=0 is invalid; allowed: a positive int"),
    ("yes", "compile_blocks='yes' is invalid; allowed: True, False, or a dict"),
])
def test_compile_blocks_rejects_bad_values(value, message):
    with pytest.raises(ValueError, match=message):
        DVGConfig(compile_blocks=value)


def test_compile_blocks_accepts_bools_and_compile_kwargs():
    assert DVGConfig(compile_blocks=True).to_dict()["compile_blocks"] is True
    config = DVGConfig(compile_blocks={"backend": "aot_eager", "fullgraph": True})
    assert config.compile_blocks == {"backend": "aot_eager", "fullgraph": True}
    assert json.loads(json.dumps(config.to_dict()))["compile_blocks"] == {"backend": "aot_eager", "fullgraph": True}
