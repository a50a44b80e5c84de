"""`compile_blocks` and prompts of new text lengths: the graphs are dynamic in the packed token count (and, in the
per-sample packed forward, in the text stream's length), so a second and a third call whose prompts have other
valid lengths — same plan, so same stage shapes — compile nothing, and every call equals the eager run.

Covered: HunyuanVideo and HunyuanVideo-1.5 (true CFG: the negative prompt has lengths of its own, so the two
conditions of one step share graphs too), each on one plan (the blocks' own compiled forward) and on a mixed-plan
batch (the packed forward's compiled per-block computations from stage 1 on), all with fullgraph=True; fused RoPE;
`PackedAttention.for_compile`'s grid bound against the exact max_seqlen. A counting backend (it runs each graph
Dynamo hands it as traced) keeps it cheap on CPU; the inductor runs are at the end (CPU: the packed forward alone;
CUDA: the whole pipeline)."""
import pytest
import torch
import torch._dynamo

import _tiny_pipes as tp
from _tolerances import assert_verbose_allclose

from dvg_engine import processors
from dvg_engine.engine import compile_pipeline
from dvg_engine.ops import _registry

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GEOM = dict(height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES, num_inference_steps=tp.STEPS,
            output_type="latent")
ONE_PLAN = {"spatial_demand": 0.5, "temporal_demand": 0.5}
MIXED = [{"spatial_demand": 1.0, "temporal_demand": 0.0}, {"spatial_demand": 0.0, "temporal_demand": 1.0}]


class CountingBackend:
    """Records every graph Dynamo compiles and runs it as traced, or through `delegate` (another backend)."""

    def __init__(self, delegate=None) -> None:
        self.graphs = 0
        self.delegate = delegate

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        if self.delegate is not None:
            return self.delegate(graph_module, example_inputs)
        return graph_module.forward


def hv15_prompt(lengths, lengths_2, negative_lengths, negative_lengths_2, seed=1):
    """tp.hv15_prompt with the given valid (prefix) lengths of the MLLM and ByT5 masks, per sample."""
    prompt = tp.hv15_prompt(len(lengths), seed=seed, negative=True)
    for prefix, first, second in (("", lengths, lengths_2), ("negative_", negative_lengths, negative_lengths_2)):
        for key, valid in (("prompt_embeds_mask", first), ("prompt_embeds_mask_2", second)):
            mask = torch.zeros_like(prompt[prefix + key])
            for b, n in enumerate(valid):
                mask[b, :n] = 1
            prompt[prefix + key] = mask
    return prompt


# (pipe, prompt embeddings with three sets of valid lengths, samples, plan, graphs of the first call). Graphs per
# stage shape: HunyuanVideo on one plan, 3 (the dual-stream blocks, and the single-stream blocks twice: the first
# gets the dual stream's contiguous output, the others a slice; test_real_prompts_of_new_lengths_compile_nothing);
# its packed forward, 2 (its single-stream computation returns views of the stream's row, contiguous for the next
# one); HunyuanVideo-1.5, 1 (dual-stream blocks only). Four stage shapes per plan; the mixed-plan batch runs stage
# 0 (shared) through the blocks' own forward.
CASES = {
    "hv_mixed_plans": (lambda: tp.hv_pipe(num_layers=2, num_single_layers=2),
                       [tp.hv_prompt(2, valid_lengths=v) for v in ([9, 6], [7, 3], [tp.HV_TEXT_LEN, 1])], 2, MIXED,
                       3 + 3 * 2),
    "hv15_one_plan": (lambda: tp.hv15_pipe(guidance_scale=4.0),
                      [hv15_prompt([8], [5], [3], [2]), hv15_prompt([3], [1], [10], [6]),
                       hv15_prompt([10], [6], [1], [1])], 1, ONE_PLAN, 4 * 1),
    "hv15_mixed_plans": (lambda: tp.hv15_pipe(guidance_scale=4.0),
                         [hv15_prompt([8, 7], [5, 4], [2, 9], [1, 3]), hv15_prompt([3, 9], [2, 6], [8, 8], [5, 5]),
                          hv15_prompt([10, 1], [6, 1], [1, 10], [1, 6])], 2, MIXED, 1 + 3 * 1),
}


def _eager_and_compiled(pipe, prompts, batch, plan, backend, **options):
    """Per prompt: (the eager DVG result, the compiled one, the graphs the compiled call built)."""
    out = []
    for prompt in prompts:
        compile_pipeline(pipe, budget=0.5, plan=plan, compile_blocks=False, **options)
        eager = pipe(**prompt, generator=tp.gens(batch), **GEOM).frames
        compile_pipeline(pipe, compile_blocks={"backend": backend, "fullgraph": True})
        before = backend.graphs
        compiled = pipe(**prompt, generator=tp.gens(batch), **GEOM).frames
        out.append((eager, compiled, backend.graphs - before))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_new_prompt_lengths_compile_nothing(case):
    torch._dynamo.reset()  # graphs cached by earlier tests (same code objects) would hide the compiles
    make_pipe, prompts, batch, plan, first_graphs = CASES[case]
    pipe = make_pipe()
    pipe.set_progress_bar_config(disable=True)
    backend = CountingBackend()
    results = _eager_and_compiled(pipe, prompts, batch, plan, backend)
    shapes = [s["stage_shapes"] for s in pipe.dvg.last_report["samples"]]
    assert len({tuple(map(tuple, s)) for s in shapes}) == batch  # the mixed-plan cases do mix plans
    assert [graphs for _, _, graphs in results] == [first_graphs, 0, 0]
    for k, (eager, compiled, _) in enumerate(results):
        assert_verbose_allclose(compiled, eager, atol=1e-5, rtol=1e-5, name=f"{case}: prompt set {k}, compiled vs eager")
    # the prompt sets do differ in their results (the lengths reach the output)
    assert not torch.allclose(results[0][0], results[1][0], atol=1e-3)
    pipe.dvg.restore()


def test_real_prompts_of_new_lengths_compile_nothing():
    """The service case: text prompts of different word counts through the pipeline's own prompt encoding (tiny
    Llama + CLIP; the tokenizer pads to max_sequence_length, so only the valid lengths change), one plan."""
    from dvg_engine.tiny import tiny_hunyuan_video_pipeline
    torch._dynamo.reset()
    pipe = tiny_hunyuan_video_pipeline(num_attention_heads=2, num_layers=1, num_single_layers=2)
    pipe.set_progress_bar_config(disable=True)
    args = dict(GEOM, max_sequence_length=32)
    prompts = ["a cat", "a red cat walks along the beach at night", "dog"]
    valid = [int(pipe.encode_prompt(prompt=p, prompt_2=None, max_sequence_length=32)[2].sum()) for p in prompts]
    assert len(set(valid)) == 3, valid
    backend = CountingBackend()
    graphs = []
    for prompt in prompts:
        # an explicit plan: one from each prompt's x̂0 might differ, and new stage shapes do compile
        compile_pipeline(pipe, budget=0.5, plan=ONE_PLAN, compile_blocks=False)
        eager = pipe(prompt=prompt, generator=tp.gens(1), **args).frames
        compile_pipeline(pipe, compile_blocks={"backend": backend, "fullgraph": True})
        before = backend.graphs
        compiled = pipe(prompt=prompt, generator=tp.gens(1), **args).frames
        graphs.append(backend.graphs - before)
        assert_verbose_allclose(compiled, eager, atol=1e-5, rtol=1e-5, name=f"prompt {prompt!r}: compiled vs eager")
    assert graphs == [4 * 3, 0, 0]
    pipe.dvg.restore()


def test_fused_rope_new_prompt_lengths():
    """Fused RoPE on a mixed-plan batch: equal to eager for every prompt set; new lengths compile nothing (the pack
    ops take the symbolic token count)."""
    torch._dynamo.reset()
    pipe = tp.hv_pipe(num_layers=2, num_single_layers=2)
    pipe.set_progress_bar_config(disable=True)
    prompts = [tp.hv_prompt(2, valid_lengths=v) for v in ([9, 6], [7, 3])]
    results = _eager_and_compiled(pipe, prompts, 2, MIXED, CountingBackend(), fused_rope=True)
    first = 3 + 3 * 2
    assert [graphs for _, _, graphs in results] == [first, 0]
    for k, (eager, compiled, _) in enumerate(results):
        assert_verbose_allclose(compiled, eager, atol=1e-5, rtol=1e-5, name=f"fused RoPE: prompt set {k}")
    pipe.dvg.restore()


# ---- PackedAttention.for_compile ------------------------------------------------------------------------------

def _layout():
    return processors.PackedAttention.prefix([17, 9], 20, "cpu")


def test_for_compile_rejects_a_bound_below_the_longest_segment():
    with pytest.raises(ValueError, match=r"max_seqlen=16 is invalid; allowed: an int >= the longest segment \(17\)"):
        _layout().for_compile(16)


def test_attention_with_the_compile_bound_equals_the_exact_max_seqlen():
    """The bound only sizes the Triton kernel's grid (the extra programs find no rows; the torch reference does not
    read it): the output is the same, bit for bit."""
    if not _registry.triton_importable():
        pytest.skip("triton is not importable")
    g = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 20, 2, 64, generator=g) for _ in range(3))
    exact = _layout()
    bounded = _layout().for_compile(20 + 64)
    assert (exact.max_seqlen, bounded.max_seqlen) == (17, 84) and not bounded.dynamic_seq_len
    with _registry.use_backend("triton"):
        want = processors.packed_attention(query, key, value, exact)
        got = processors.packed_attention(query, key, value, bounded)
    assert torch.equal(got, want)
    assert want[1, 9:].abs().sum() == 0 and want[1, :9].abs().sum() > 0


def test_dynamic_seq_len_layout_skips_only_the_token_count_check():
    query = torch.zeros(1, 30, 2, 64)
    fixed = processors.PackedAttention.segments([torch.arange(0, 12), torch.arange(12, 20)], 20, "cpu")
    with pytest.raises(RuntimeError, match=r"layout is for \(batch, tokens\)=\(1, 20\) but the layer received \(1, 30\)"):
        processors.packed_attention(query, query, query, fixed)
    dynamic = processors.PackedAttention.segments([torch.arange(0, 12), torch.arange(12, 20)], 20,
                                                  "cpu").for_compile(40, dynamic_seq_len=True)
    out = processors.packed_attention(query, query, query, dynamic)  # the caller answers for the token count
    assert out.shape == (1, 30, 128)
    with pytest.raises(RuntimeError, match=r"layout is for \(batch, tokens\)=\(1, 20\) but the layer received \(2, 30\)"):
        processors.packed_attention(torch.zeros(2, 30, 2, 64), query, query, dynamic)


# ---- inductor --------------------------------------------------------------------------------------------------

def _packed_inputs(lengths):
    """Two samples on different latent grids through the HunyuanVideo packed forward, prompts of the given valid
    lengths: (hidden_list, timestep, text_lengths, kwargs)."""
    g = torch.Generator().manual_seed(5)
    hidden = [torch.randn(1, 4, 3, 8, 12, generator=g), torch.randn(1, 4, 5, 6, 8, generator=g)]
    prompt = tp.hv_prompt(2, valid_lengths=lengths)
    kwargs = dict(encoder_hidden_states=prompt["prompt_embeds"], pooled_projections=prompt["pooled_prompt_embeds"],
                  encoder_attention_mask=prompt["prompt_attention_mask"], guidance=torch.full((2,), 6000.0))
    return hidden, torch.full((2,), 500.0), lengths, kwargs


def test_packed_forward_inductor_cpu_new_lengths_compile_nothing():
    """Inductor (CPU) on the packed forward's per-block computations: its lowering must not specialise on the text
    length either (a guard it adds would recompile); 2 graphs (dual- and single-stream), then none."""
    from torch._inductor.compile_fx import compile_fx
    torch._dynamo.reset()
    transformer = tp.hv_transformer()
    state = processors.install(transformer, "hunyuan_video")
    backend = CountingBackend(delegate=compile_fx)
    eager = processors.PackedHunyuanVideoForward(transformer, state)
    compiled = processors.PackedHunyuanVideoForward(transformer, state,
                                                    compile_kwargs={"backend": backend, "fullgraph": True})
    graphs = []
    with torch.no_grad():
        for lengths in ([9, 6], [4, 11], [tp.HV_TEXT_LEN, 1]):
            hidden, timestep, text_lengths, kwargs = _packed_inputs(lengths)
            before = backend.graphs
            got = compiled(hidden, timestep, text_lengths, **kwargs)
            graphs.append(backend.graphs - before)
            want = eager(hidden, timestep, text_lengths, **kwargs)
            for b in range(2):
                assert_verbose_allclose(got[b], want[b], atol=1e-5, rtol=1e-5, name=f"inductor {lengths} sample {b}")
    assert graphs == [2, 0, 0]
    processors.uninstall(transformer)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_new_prompt_lengths_compile_nothing_inductor_cuda():
    """compile_blocks=True (inductor) on CUDA, one plan and a mixed-plan batch: the calls after the first, with
    prompts of other lengths, compile no graph and match eager (fp32; inductor may reorder reductions)."""
    from torch._dynamo.utils import counters
    for plan, batch, lengths in ((ONE_PLAN, 1, ([9], [4], [tp.HV_TEXT_LEN])),
                                 (MIXED, 2, ([9, 6], [7, 3], [tp.HV_TEXT_LEN, 1]))):
        torch._dynamo.reset()
        pipe = tp.hv_pipe(num_layers=2, num_single_layers=2).to("cuda")
        pipe.set_progress_bar_config(disable=True)
        counts = []
        for valid in lengths:
            prompt = {k: v.to("cuda") for k, v in tp.hv_prompt(batch, valid_lengths=valid).items()}
            gens = [torch.Generator("cuda").manual_seed(b) for b in range(batch)]
            compile_pipeline(pipe, budget=0.5, plan=plan, compile_blocks=False)
            eager = pipe(**prompt, generator=gens, **GEOM).frames
            compile_pipeline(pipe, compile_blocks=True)
            counters.clear()
            gens = [torch.Generator("cuda").manual_seed(b) for b in range(batch)]
            compiled = pipe(**prompt, generator=gens, **GEOM).frames
            counts.append(counters["stats"]["unique_graphs"])
            assert not counters["graph_break"]
            assert_verbose_allclose(compiled, eager, atol=2e-4, rtol=1e-4, name=f"inductor {valid} vs eager")
        assert counts[0] > 0 and counts[1:] == [0, 0], counts
        pipe.dvg.restore()
