"""`compile_blocks` on the per-sample packed forward (two samples of one batch on different plans, one varlen
stream per step): its per-block computations compile at the first step of each stage only — stage 0 (one plan
for the batch) through the blocks' own compiled forward, stages 1-3 through the packed forward's compiled
`_dual_block` / `_single_block` —, a second identical call compiles nothing, and the result equals the eager
packed forward. A counting backend (it runs each graph Dynamo hands it as traced) keeps this cheap on CPU, as in
tests/test_engine_compile.py."""
import pytest
import torch
import torch._dynamo

import _tiny_pipes as tp
from _tolerances import assert_verbose_allclose

from dvg_engine import processors
from dvg_engine.engine import compile_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GEOM = dict(height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES, num_inference_steps=tp.STEPS,
            output_type="latent")
DEMANDS = [{"spatial_demand": 1.0, "temporal_demand": 0.0}, {"spatial_demand": 0.0, "temporal_demand": 1.0}]


class CountingBackend:
    """Records every graph Dynamo compiles (and whether it holds the packed path's per-segment LayerNorm op,
    which the diffusers blocks never call) and runs it as traced, or through `delegate` (another backend)."""

    def __init__(self, delegate=None) -> None:
        self.graphs = 0
        self.packed_graphs = 0
        self.delegate = delegate

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        self.packed_graphs += "modulated_layer_norm" in graph_module.code
        if self.delegate is not None:
            return self.delegate(graph_module, example_inputs)
        return graph_module.forward


def _graphs_per_step(pipe, backend, prompt, args, embedder):
    """Runs the pipeline; returns the graphs compiled during each transformer evaluation (one per step and
    condition), counted from one embedding module's pre-hook, which both forward paths call once."""
    before = []
    hook = getattr(pipe.transformer, embedder).register_forward_pre_hook(lambda m, a: before.append(backend.graphs))
    try:
        frames = pipe(**prompt, generator=tp.gens(2), **args).frames
    finally:
        hook.remove()
    marks = before + [backend.graphs]
    return frames, [b - a for a, b in zip(marks, marks[1:])]


def _stage_starts(report, conditions):
    executed = report["executed_model_calls"]
    return {conditions * sum(executed[:k]) for k in range(4)}


@pytest.mark.parametrize("model", ["hv", "hv15_cfg"])
def test_packed_forward_compiles_once_per_stage_and_matches_eager(model):
    torch._dynamo.reset()  # graphs cached by earlier tests (same code objects) would hide the compiles
    if model == "hv":
        # two blocks of each class: the packed forward's blocks of one class share their graphs
        pipe, prompt, conditions, embedder = (tp.hv_pipe(num_layers=2, num_single_layers=2),
                                              tp.hv_prompt(2, valid_lengths=[9, 6]), 1, "time_text_embed")
    else:
        pipe, prompt, conditions, embedder = tp.hv15_pipe(guidance_scale=4.0), tp.hv15_prompt(2, negative=True), 2, \
            "time_embed"
    pipe.set_progress_bar_config(disable=True)
    eager = compile_pipeline(pipe, budget=0.5, plan=DEMANDS)(**prompt, generator=tp.gens(2), **GEOM).frames
    shapes = [s["stage_shapes"] for s in pipe.dvg.last_report["samples"]]
    assert shapes[0][1:] != shapes[1][1:]  # the two samples run packed from stage 1 on

    # fullgraph: the packed block computations trace without a graph break
    backend = CountingBackend()
    compile_pipeline(pipe, compile_blocks={"backend": backend, "fullgraph": True})
    compiled, per_step = _graphs_per_step(pipe, backend, prompt, GEOM, embedder)
    starts = _stage_starts(pipe.dvg.last_report, conditions)
    assert len(per_step) == conditions * tp.STEPS
    assert all(n == 0 for i, n in enumerate(per_step) if i not in starts), (per_step, sorted(starts))
    # every stage compiles; stages 1-3 (packed) compile the packed forward's graphs, one set per stage
    packed_starts = sorted(starts)[1:]
    assert all(per_step[i] > 0 for i in starts), (per_step, sorted(starts))
    assert len({per_step[i] for i in packed_starts}) == 1, (per_step, packed_starts)
    assert backend.packed_graphs == 3 * per_step[packed_starts[0]]
    assert_verbose_allclose(compiled, eager, atol=1e-5, rtol=1e-5, name="compiled packed forward vs eager")

    # a second identical call compiles nothing new
    first_call = backend.graphs
    again, per_step = _graphs_per_step(pipe, backend, prompt, GEOM, embedder)
    assert backend.graphs == first_call and per_step == [0] * (conditions * tp.STEPS)
    assert_verbose_allclose(again, compiled, atol=1e-5, rtol=1e-5, name="second compiled call")

    # nothing stays compiled after the call: neither the blocks nor a packed forward made outside a DVG call
    assert all("_compiled_call_impl" not in b.__dict__ for b in pipe.transformer.transformer_blocks)
    packed = processors.PackedHunyuanVideoForward(pipe.transformer, processors.DVGAttentionState())
    assert packed.dual_block is packed._dual_block and packed.single_block is packed._single_block
    pipe.dvg.restore()


def test_packed_forward_compiled_token_replace_matches_eager():
    """HunyuanVideo I2V token_replace: the packed blocks take the frame-0 modulation rows (tr_emb) as well. The
    graphs go through AOTAutograd (aot_eager), which traces the dvg ops through their fake implementations as
    inductor does (inductor itself costs ~100 s of compiling here; its CUDA twin is below)."""
    from torch._dynamo.backends.debugging import aot_eager
    torch._dynamo.reset()
    pipe = tp.hv_i2v_pipe("token_replace")
    pipe.set_progress_bar_config(disable=True)
    prompt = tp.hv_prompt(2)
    args = dict(GEOM, image=tp.test_image())
    eager = compile_pipeline(pipe, budget=0.5, plan=DEMANDS)(**prompt, generator=tp.gens(2), **args).frames
    backend = CountingBackend(delegate=aot_eager)
    compile_pipeline(pipe, compile_blocks={"backend": backend, "fullgraph": True})
    compiled, per_step = _graphs_per_step(pipe, backend, prompt, args, "time_text_embed")
    starts = _stage_starts(pipe.dvg.last_report, 1)
    assert all((n > 0) == (i in starts) for i, n in enumerate(per_step)), (per_step, sorted(starts))
    assert backend.packed_graphs > 0
    assert_verbose_allclose(compiled, eager, atol=1e-5, rtol=1e-5, name="compiled token_replace vs eager")
    pipe.dvg.restore()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_packed_forward_compiled_inductor_cuda():
    """Inductor on CUDA (compile_blocks=True): the mixed-plan batch compiles at stage starts only, nothing on a
    second call, and matches the eager packed forward (fp32 model; inductor may reorder reductions)."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    pipe = tp.hv_pipe(num_layers=2, num_single_layers=2).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    prompt = {k: v.to("cuda") for k, v in tp.hv_prompt(2, valid_lengths=[9, 6]).items()}

    def gens():
        return [torch.Generator("cuda").manual_seed(b) for b in range(2)]

    eager = compile_pipeline(pipe, budget=0.5, plan=DEMANDS)(**prompt, generator=gens(), **GEOM).frames
    compile_pipeline(pipe, compile_blocks=True)
    counters.clear()
    before = []
    hook = pipe.transformer.time_text_embed.register_forward_pre_hook(
        lambda m, a: before.append(counters["stats"]["unique_graphs"]))
    try:
        compiled = pipe(**prompt, generator=gens(), **GEOM).frames
        first_call = counters["stats"]["unique_graphs"]
        again = pipe(**prompt, generator=gens(), **GEOM).frames
    finally:
        hook.remove()
    marks = before[:tp.STEPS] + [first_call]
    per_step = [b - a for a, b in zip(marks, marks[1:])]
    starts = _stage_starts(pipe.dvg.last_report, 1)
    assert all((n > 0) == (i in starts) for i, n in enumerate(per_step)), (per_step, sorted(starts))
    assert counters["stats"]["unique_graphs"] == first_call and not counters["graph_break"]
    assert_verbose_allclose(compiled, eager, atol=2e-4, rtol=1e-4, name="inductor packed forward vs eager")
    assert_verbose_allclose(again, compiled, atol=1e-6, rtol=1e-6, name="second inductor call")
    pipe.dvg.restore()
