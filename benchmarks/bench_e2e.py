"""End-to-end DVG benchmark: measured speedup of the denoising loop next to the ideal one.

CPU (`run("cpu", quick)`, or `python benchmarks/bench_e2e.py --device cpu`): a random-weight
HunyuanVideo pipeline whose transformer is attention-dominated (4 heads × 64, a few layers) at
368×640 px × 33 frames. The unmodified pipeline and the DVG-compiled one run with the same seed and
steps, alternating (baseline, DVG, baseline, DVG), `output_type="latent"` (the VAE is not part of the
loop). Times are best-of (the least load-disturbed estimate on a shared machine); medians are reported
too. Reported:

* measured speedup = best baseline loop time / best DVG loop time;
* ideal speedup = N · t(full) / Σ_k calls_k · t(stage_k), with t(shape) the transformer's own forward
  time (its diffusers processors; best of 3, measured round-robin over the shapes) at that shape and
  calls_k the executed model calls per stage (dvg-spec §4) — what DVG would give with zero overhead and
  the baseline's attention;
* measured / ideal (target ≥ 0.9 at budget 0.5) and the transitions' share of the DVG loop (< 1%).
  DVG also skips HunyuanVideo's text padding in attention, which the ideal does not count, so
  measured / ideal can exceed 1 when the text is mostly padding.

GPU (`run("cuda", quick)`, used by `make gpu-check`): the full-size HunyuanVideo transformer config
(13B, random bf16 weights, built on the meta device and materialised on the GPU) timed per step at
every stage shape of a 720p / 129-frame plan at budget 0.5 (packed varlen attention, text padding
skipped), and at the full shape with diffusers' own processors (the unmodified pipeline's attention).
Reported: the implied 50-step loop speedup vs the unmodified pipeline, the ideal (same attention path
at every shape), and their ratio. `quick` keeps the real layer width but fewer blocks (1 + 2, the full
model's ratio), scaled ×20 to the full 20 + 40, and times one call per shape after one warm-up; the row
says so. The GPU mode prints its estimated cost first and timestamped progress lines, logs and writes
(`--json`) the rows after every measured shape, and skips with a note whatever would cross its wall-clock
budget (`--budget-s`, default 400 s: one 600 s device call holds it with the interpreter start-up).

    python benchmarks/bench_e2e.py --device cuda --quick --json e2e.json      # ~2-4 min on an H100
    python benchmarks/bench_e2e.py --device cuda --budget-s 540 --json e2e.json  # 60 blocks; may skip the baseline
    python benchmarks/bench_e2e.py --device meta --quick     # no GPU: dry run of that code path, real shapes
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BUDGET = 0.5
# demands of a typical clip (moderate detail and motion); the plan only changes the stage shapes
DEMANDS = {"spatial_demand": 0.3, "temporal_demand": 0.3}


# ---------------------------------------------------------------------------------------------------
# CPU: end to end
# ---------------------------------------------------------------------------------------------------

CPU_SETUP = dict(height=368, width=640, num_frames=33, steps=12, heads=4, head_dim=64, layers=(2, 2),
                 text_len=256, text_valid=64)
# quick: one double- and one single-stream block (attention still dominates: ~70% of a full-grid forward)
CPU_QUICK = dict(CPU_SETUP, layers=(1, 1))


def _cpu_pipe(layers, heads, head_dim, text_dim=64, pooled_dim=32, seed=0):
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)
    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=16, out_channels=16, num_attention_heads=heads, attention_head_dim=head_dim,
        num_layers=layers[0], num_single_layers=layers[1], num_refiner_layers=1, mlp_ratio=4.0, patch_size=2,
        patch_size_t=1, text_embed_dim=text_dim, pooled_projection_dim=pooled_dim,
        rope_axes_dim=(16, 24, 24) if head_dim == 64 else (16, 56, 56)).eval()
    vae = AutoencoderKLHunyuanVideo(latent_channels=16, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                    norm_num_groups=4, mid_block_add_attention=False).eval()
    pipe = HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None,
                                tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _prompt(text_len, text_valid, text_dim=64, pooled_dim=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, text_len)
    mask[:, :text_valid] = 1
    return dict(prompt_embeds=torch.randn(1, text_len, text_dim, generator=g),
                pooled_prompt_embeds=torch.randn(1, pooled_dim, generator=g), prompt_attention_mask=mask)


def _forward_times(transformer, shapes, prompt, repeats: int) -> List[float]:
    """Best-of-`repeats` seconds of the transformer's own forward at each latent shape (T, H, W), measured
    round-robin over the shapes so that load changes on a shared machine hit all of them alike."""
    inputs = []
    for t, h, w in shapes:
        x = torch.randn(1, transformer.config.in_channels, t, h, w)
        inputs.append(dict(hidden_states=x, timestep=torch.tensor([900.0]),
                           encoder_hidden_states=prompt["prompt_embeds"],
                           encoder_attention_mask=prompt["prompt_attention_mask"],
                           pooled_projections=prompt["pooled_prompt_embeds"], guidance=torch.tensor([6000.0]),
                           return_dict=False))
    best = [float("inf")] * len(shapes)
    with torch.no_grad():
        for _ in range(repeats):
            for k, kwargs in enumerate(inputs):
                start = time.perf_counter()
                transformer(**kwargs)
                best[k] = min(best[k], time.perf_counter() - start)
    return best


def run_cpu(quick: bool = False, pairs: Optional[int] = None) -> List[dict]:
    """Times are best-of (the minimum): on a shared CPU the minimum is the least load-disturbed estimate of
    the work itself; the medians are reported too."""
    from dvg_engine.engine import compile_pipeline
    from dvg_engine.planner import executed_model_calls
    setup = CPU_QUICK if quick else CPU_SETUP
    pairs = pairs or 2
    baseline = _cpu_pipe(setup["layers"], setup["heads"], setup["head_dim"])
    dvg = _cpu_pipe(setup["layers"], setup["heads"], setup["head_dim"])
    compile_pipeline(dvg, budget=BUDGET, plan=DEMANDS)
    prompt = _prompt(setup["text_len"], setup["text_valid"])
    args = dict(height=setup["height"], width=setup["width"], num_frames=setup["num_frames"],
                num_inference_steps=setup["steps"], output_type="latent")
    base_times, dvg_times, transition_times = [], [], []
    for _ in range(pairs):
        start = time.perf_counter()
        baseline(**prompt, generator=torch.Generator().manual_seed(0), **args)
        base_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        dvg(**prompt, generator=torch.Generator().manual_seed(0), **args)
        dvg_times.append(time.perf_counter() - start)
        transition_times.append(dvg.dvg.last_report["time_s"]["transitions"])
    report = dvg.dvg.last_report
    shapes = [tuple(s) for s in report["samples"][0]["stage_shapes"]]
    calls = executed_model_calls(setup["steps"])
    forward = _forward_times(baseline.transformer, shapes, prompt, 3)
    t_stage, t_full = forward, forward[-1]
    ideal = setup["steps"] * t_full / sum(c * t for c, t in zip(calls, t_stage))
    measured = min(base_times) / min(dvg_times)
    row = {
        "device": "cpu", "threads": torch.get_num_threads(), "geometry": f"{setup['height']}x{setup['width']}x"
        f"{setup['num_frames']}", "latent": list(shapes[-1]), "steps": setup["steps"], "budget": BUDGET,
        "heads": setup["heads"], "head_dim": setup["head_dim"], "layers": list(setup["layers"]),
        "text_valid/len": f"{setup['text_valid']}/{setup['text_len']}", "stage_shapes": [list(s) for s in shapes],
        "calls": list(calls), "baseline_s": base_times, "dvg_s": dvg_times, "forward_stage_s": t_stage,
        "measured_speedup": measured,
        "measured_speedup_median": statistics.median(base_times) / statistics.median(dvg_times),
        "ideal_speedup": ideal, "measured_over_ideal": measured / ideal,
        "token_step_ratio": report["samples"][0]["token_step_ratio"],
        "transition_share": min(t / d for t, d in zip(transition_times, dvg_times)),
    }
    return [row]


# ---------------------------------------------------------------------------------------------------
# GPU: full-size transformer, per-step time at each stage shape
# ---------------------------------------------------------------------------------------------------

HV_FULL_CONFIG = dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
                      num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                      qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
                      rope_theta=256.0, rope_axes_dim=(16, 56, 56))
GPU_TEXT_LEN, GPU_TEXT_VALID = 256, 80
STEPS = 50
# quick: 1 double- + 2 single-stream blocks keep the full model's 20:40 ratio, so ×20 scales exactly to 20 + 40
# (the embedders, token refiner and final layer are scaled too: < 1% of a step at these token counts)
QUICK_LAYERS = (1, 2)
# timed calls per shape; our path gets one untimed warm-up call before them (it pays Triton's compile and the
# autotuning at each new shape); the baseline's first call is timed (SDPA compiles nothing, and our shapes have
# already initialised cuBLAS / the allocator), which keeps the slowest forward of the run to `repeats` calls
QUICK_REPEATS, FULL_REPEATS = 1, 2
# The whole of run_gpu (model build included) stays under this unless told otherwise: what does not fit is
# skipped with a note instead of the process being killed by a caller's time limit with nothing written.
DEFAULT_BUDGET_S = 400.0
# Throughputs for the cost estimate printed before running (FLOP/s; refined by the first measurement):
# H100 bf16, measured last session — packed Triton attention ~500 TFLOP/s, diffusers' padded-mask SDPA
# ~100-140 (memory-efficient kernel), dense linears ~600.
_EST_THROUGHPUT = {"cuda": dict(ours=450e12, baseline=110e12, linear=550e12),
                   "cpu": dict(ours=20e9, baseline=10e9, linear=40e9),
                   "meta": dict(ours=1e18, baseline=1e18, linear=1e18)}  # the dry run computes nothing
_EST_FIRST_CALL_S = {"cuda": 45.0, "cpu": 0.0, "meta": 0.0}  # Triton compile + autotune at a new shape (guess)


def _materialise(config: Dict, device: str, dtype: torch.dtype, seed: int = 0):
    from diffusers import HunyuanVideoTransformer3DModel
    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModel(**config)
    # cast while still on the meta device: materialising in fp32 first would need 52 GB for the 13B model
    model = model.to(dtype)
    if torch.device(device).type == "meta":  # the dry run: shapes only, no weights
        return model.eval()
    model = model.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:  # norm weights
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=generator)
    return model.eval()


def _block_params(config: Dict) -> tuple:
    """(parameters of one double-stream block, of one single-stream block), counted on the meta device."""
    from diffusers import HunyuanVideoTransformer3DModel
    tiny = dict(config, num_layers=1, num_single_layers=1, num_refiner_layers=1)
    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModel(**tiny)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    return count(model.transformer_blocks[0]), count(model.single_transformer_blocks[0])


def _forward_flops(config: Dict, block_params: tuple, latent_tokens: int, text_tokens: int) -> tuple:
    """(attention FLOPs, linear FLOPs) of one forward: QKᵀ and PV over every joint-attention layer, and the
    block weights (a double-stream block sends each token through one of its two streams' weights)."""
    layers = config["num_layers"] + config["num_single_layers"]
    tokens = latent_tokens + text_tokens
    attention = layers * 4 * tokens * tokens * config["num_attention_heads"] * config["attention_head_dim"]
    linear = 2 * tokens * (config["num_layers"] * block_params[0] / 2 + config["num_single_layers"] * block_params[1])
    return attention, linear


class _Clock:
    """Elapsed wall time since the start of run_gpu, and progress lines that survive a killed process."""

    def __init__(self, log: Callable[[str], None]):
        self.start = time.perf_counter()
        self.log = log

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def say(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        self.log(f"bench_e2e [{stamp} UTC +{self.elapsed():6.1f}s] {message}")


def _print(message: str) -> None:
    print(message, flush=True)


def _timed_calls(fn: Callable[[], object], repeats: int, cuda: bool, warmup: bool = True) -> tuple:
    """(wall seconds of the first call, median seconds of the timed calls): one untimed warm-up call then
    `repeats` timed ones, or without `warmup` `repeats` timed calls, the first of them included. CUDA: events
    around each call."""
    def once() -> float:
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    wall = time.perf_counter()
    first_timed = once()
    first = time.perf_counter() - wall
    times = ([] if warmup else [first_timed]) + [once() for _ in range(repeats - (0 if warmup else 1))]
    return first, statistics.median(times)


def _write_partial(path: Optional[str], rows: List[dict], complete: bool) -> None:
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"complete": complete, "rows": rows}, fh, indent=1, default=str)
    os.replace(tmp, path)  # a reader (or a kill mid-write) never sees half a file


def run_gpu(device: str = "cuda", quick: bool = False, *, config_override: Optional[Dict] = None,
            geometry=(720, 1280, 129), dtype: torch.dtype = torch.bfloat16, budget_s: Optional[float] = None,
            repeats: Optional[int] = None, partial_path: Optional[str] = None,
            log: Callable[[str], None] = _print) -> List[dict]:
    """Per-step transformer time at each stage shape of a 720p/129-frame plan (budget 0.5) with the packed
    attention, and at the full shape with diffusers' processors; the implied 50-step speedup.

    Prints the estimated cost first, then one timestamped line per step of work. After every measured shape
    the rows so far are logged as one JSON line and written to `partial_path` ({"complete", "rows"}), so a
    run stopped by a time limit still leaves what it measured. Work whose estimate would cross `budget_s`
    (wall seconds from the start of this call, default DEFAULT_BUDGET_S) is skipped with a note in its row.
    Order: stage 0..3 (ascending cost; stage 3 is the full grid), then the baseline (the slowest), then the
    extra: stage 3 with RoPE fused into the q/k pack (the engine's `fused_rope` option) vs its RoPE tables.
    Rows: the four stages, the baseline, the fused-RoPE stage 3, the 50-step loop (None where not measured).
    `device="cpu"` with a tiny `config_override`/`geometry` and fp32 is the smoke test of this code path;
    `device="meta"` is a dry run of the real configuration and geometry (shapes only, no weights, ~seconds):
    every forward of the GPU run goes through the same processors and ops (their fake implementations)."""
    from dvg_engine import planner, processors
    cuda = str(device).startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("bench_e2e GPU mode needs a CUDA device; none is available")
    clock = _Clock(log)
    budget_s = DEFAULT_BUDGET_S if budget_s is None else float(budget_s)
    repeats = repeats or (QUICK_REPEATS if quick else FULL_REPEATS)
    config = dict(HV_FULL_CONFIG)
    full_layers = (HV_FULL_CONFIG["num_layers"], HV_FULL_CONFIG["num_single_layers"])
    if quick:
        config.update(num_layers=QUICK_LAYERS[0], num_single_layers=QUICK_LAYERS[1])
    if config_override:
        config.update(config_override)
    timed_layers = (config["num_layers"], config["num_single_layers"])
    # scaled to 20 + 40 only when the timed blocks keep the full model's width and 1:2 ratio
    scale = 1.0
    if quick and not config_override:
        scale = sum(full_layers) / sum(timed_layers)
    grid = planner.full_grid("hunyuan_video", *geometry)
    plan = planner.plan_stages(grid, STEPS, BUDGET, DEMANDS["spatial_demand"], DEMANDS["temporal_demand"])
    calls = list(plan.executed_model_calls)
    patch = config["patch_size"]

    def tokens(shape) -> int:
        return shape[0] * (shape[1] // patch) * (shape[2] // patch)

    # what will run, in order: (label, latent shape, text tokens in attention, our path?)
    items = [(f"stage{k}", tuple(shape), GPU_TEXT_VALID, True) for k, shape in enumerate(plan.stage_shapes)]
    items.append(("baseline", tuple(grid.latent_shape), GPU_TEXT_LEN, False))
    # last, as an extra: the full grid with RoPE applied inside the q/k packing (the engine's `fused_rope`
    # option, off by default until measured on a GPU) against stage 3's per-shape RoPE tables
    items.append(("stage3_fused_rope", tuple(plan.stage_shapes[-1]), GPU_TEXT_VALID, True))
    kind = "cuda" if cuda else torch.device(device).type
    throughput = _EST_THROUGHPUT[kind]
    block_params = _block_params(config)
    estimates = {}
    for label, shape, text, ours in items:
        attention, linear = _forward_flops(config, block_params, tokens(shape), text)
        estimates[label] = attention / throughput["ours" if ours else "baseline"] + linear / throughput["linear"]
    first_call = _EST_FIRST_CALL_S[kind]

    def calls_of(ours: bool) -> int:
        return repeats + (1 if ours else 0)

    total_estimate = sum(estimates[label] * calls_of(ours) + (first_call if ours else 0.0)
                         for label, _, _, ours in items)
    clock.say(f"plan {geometry[0]}x{geometry[1]}x{geometry[2]} px, budget {BUDGET}: stage shapes "
              f"{[list(s) for s in plan.stage_shapes]}, calls {calls}; timing {timed_layers[0]}+{timed_layers[1]} "
              f"blocks{f' (x{scale:g} = {full_layers[0]}+{full_layers[1]})' if scale != 1 else ''}, {dtype}, "
              f"{repeats} timed call(s) per shape (after 1 warm-up on our path), wall budget {budget_s:.0f} s")
    for label, shape, text, ours in items:
        clock.say(f"  estimate {label:8} latent {list(shape)} = {tokens(shape)} tokens + {text} text: "
                  f"{estimates[label]:.3g} s/forward x {calls_of(ours)}"
                  + (f" + ~{first_call:.0f} s Triton compile/autotune" if ours and first_call else ""))
    clock.say(f"  estimate total ~{total_estimate:.0f} s (+ model build); first measurement recalibrates")

    rows: List[dict] = []
    measured: Dict[str, dict] = {}
    skipped: List[str] = []
    clock.say("building the transformer (meta device, materialised on the target)")
    model = _materialise(config, device, dtype)
    clock.say(f"built: {sum(p.numel() for p in model.parameters()) / 1e9:.3g} B parameters")
    g = None if torch.device(device).type == "meta" else torch.Generator(device).manual_seed(1)
    text_embeds = torch.randn(1, GPU_TEXT_LEN, config["text_embed_dim"], device=device, dtype=dtype, generator=g)
    mask = torch.zeros(1, GPU_TEXT_LEN, device=device, dtype=dtype)
    mask[:, :GPU_TEXT_VALID] = 1
    pooled = torch.randn(1, config["pooled_projection_dim"], device=device, dtype=dtype, generator=g)
    kwargs = dict(timestep=torch.tensor([900.0], device=device), encoder_hidden_states=text_embeds,
                  encoder_attention_mask=mask, pooled_projections=pooled,
                  guidance=torch.tensor([6000.0], device=device, dtype=dtype), return_dict=False)
    state = processors.install(model, "hunyuan_video")
    calibration = 1.0  # measured / estimated forward time, from the latest measurement

    for label, shape, text, ours in items:
        predicted = calibration * estimates[label] * calls_of(ours) + (first_call if ours else 0.0)
        if clock.elapsed() + predicted > budget_s:
            note = (f"skipped: {label} needs ~{predicted:.0f} s and {clock.elapsed():.0f} of {budget_s:.0f} s "
                    f"are spent (raise --budget-s, or run it alone)")
            skipped.append(label)
            measured[label] = {"skipped": note}
            clock.say(note)
            continue
        if not ours and label == "baseline":
            processors.uninstall(model)  # the unmodified pipeline's attention: diffusers' own processors
        x = torch.randn(1, config["in_channels"], *shape, device=device, dtype=dtype, generator=g)
        layout = processors.PackedAttention.prefix([tokens(shape) + text], tokens(shape) + GPU_TEXT_LEN, device) \
            if ours else None
        if label == "stage3_fused_rope":
            state = processors.install(model, "hunyuan_video")  # back after the baseline's diffusers processors
            token_grid = (shape[0] // config["patch_size_t"], shape[1] // patch, shape[2] // patch)
            layout.attach_fused_rope([token_grid], [text], False, config["rope_axes_dim"], config["rope_theta"])
        forward = _forward_call(model, dict(kwargs, hidden_states=x), state if ours else None, layout)
        clock.say(f"{label}: timing latent {list(shape)} ({'packed Triton/varlen' if ours else 'diffusers SDPA + mask'}"
                  f" attention), ~{predicted:.0f} s")
        try:
            first, median = _timed_calls(forward, repeats, cuda, warmup=ours)
            if ours:  # later predictions use what this machine did: per-forward speed and first-call overhead
                calibration = median / estimates[label]
                first_call = max(0.0, first - median)
            measured[label] = {"s": median, "first_call_s": first}
            clock.say(f"{label}: {median:.4g} s/forward ({timed_layers[0]}+{timed_layers[1]} blocks), first call "
                      f"{first:.3g} s")
        except Exception as exc:  # noqa: BLE001 - reported in the row (e.g. SDPA's O(N²) fallback running out of memory)
            measured[label] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            clock.say(f"{label}: FAILED {measured[label]['error']}")
        del x, forward  # free this shape's input before the next one is allocated
        if cuda:
            torch.cuda.empty_cache()
        rows = _gpu_rows(plan, grid, calls, measured, scale, timed_layers, repeats, device, clock, budget_s, skipped)
        log("bench_e2e partial " + json.dumps(rows, default=str))
        _write_partial(partial_path, rows, complete=False)
    processors.uninstall(model)
    del model
    if cuda:
        torch.cuda.empty_cache()
    rows = _gpu_rows(plan, grid, calls, measured, scale, timed_layers, repeats, device, clock, budget_s, skipped)
    _write_partial(partial_path, rows, complete=True)
    clock.say("done" + (f"; skipped for the budget: {', '.join(skipped)}" if skipped else ""))
    return rows


def _forward_call(model, inputs: Dict, state, layout) -> Callable[[], None]:
    """One transformer forward on `inputs`: through our packed attention when `state` is given (activated with
    `layout`), else with whatever processors the model has."""
    def forward() -> None:
        with torch.no_grad():
            if state is None:
                model(**inputs)
            else:
                with state.activate(layout):
                    model(**inputs)
    return forward


def _gpu_rows(plan, grid, calls, measured, scale, timed_layers, repeats, device, clock, budget_s, skipped) -> List[dict]:
    """Rows: one per stage shape, the baseline, then the 50-step loop (None where an input is missing)."""
    rows = []
    stage_s = []
    for k, shape in enumerate(plan.stage_shapes):
        m = measured.get(f"stage{k}", {})
        t = m.get("s")
        stage_s.append(t)
        rows.append({"what": f"forward stage{k}", "shape": list(shape), "calls": calls[k],
                     "s_per_step": None if t is None else t * scale, "first_call_s": m.get("first_call_s"),
                     **({"note": m.get("skipped") or m.get("error")} if "s" not in m else {})})
    m = measured.get("baseline", {})
    baseline = m.get("s")
    rows.append({"what": "forward full, diffusers processors", "shape": list(grid.latent_shape), "calls": STEPS,
                 "s_per_step": None if baseline is None else baseline * scale, "first_call_s": m.get("first_call_s"),
                 **({"error": m["error"]} if "error" in m else {}),
                 **({"note": m["skipped"]} if "skipped" in m else {})})
    m = measured.get("stage3_fused_rope", {})
    fused = m.get("s")
    rows.append({"what": "forward stage3, RoPE fused into the q/k pack (fused_rope)", "shape": list(plan.stage_shapes[-1]),
                 "calls": calls[-1], "s_per_step": None if fused is None else fused * scale,
                 "first_call_s": m.get("first_call_s"),
                 "vs_rope_tables": None if fused is None or stage_s[-1] is None else stage_s[-1] / fused,
                 **({"note": m.get("skipped") or m.get("error")} if "s" not in m else {})})
    complete = all(t is not None for t in stage_s)
    dvg_loop = sum(c * t for c, t in zip(calls, stage_s)) if complete else None
    implied = None if dvg_loop is None or baseline is None else STEPS * baseline / dvg_loop
    ideal = None if dvg_loop is None else STEPS * stage_s[-1] / dvg_loop
    full_layers = HV_FULL_CONFIG["num_layers"] + HV_FULL_CONFIG["num_single_layers"]
    rows.append({"what": "50-step loop", "budget": BUDGET,
                 "layers_timed": f"{timed_layers[0]}+{timed_layers[1]}"
                 + (f" (scaled x{scale:g} to {full_layers} blocks)" if scale != 1 else ""),
                 "repeats": repeats,
                 "baseline_loop_s": None if baseline is None else STEPS * baseline * scale,
                 "dvg_loop_s": None if dvg_loop is None else dvg_loop * scale, "implied_speedup_vs_baseline": implied,
                 "ideal_speedup": ideal, "speedup_over_ideal": None if implied is None else implied / ideal,
                 "density": plan.density, "wall_s": round(clock.elapsed(), 1), "wall_budget_s": budget_s,
                 "skipped": list(skipped),
                 "gpu": torch.cuda.get_device_name(device) if str(device).startswith("cuda")
                 else f"{torch.device(device).type} (smoke, times meaningless)"})
    return rows


def run(device: str = "cuda", quick: bool = False, *, budget_s: Optional[float] = None,
        partial_path: Optional[str] = None) -> List[dict]:
    """Benchmark rows (dicts). device "cuda": the full-size per-stage timing (within `budget_s` wall seconds,
    partial rows written to `partial_path`); "meta": its dry run (shapes only); "cpu": end to end."""
    if str(device).startswith("cuda") or str(device) == "meta":
        return run_gpu(device, quick, budget_s=budget_s, partial_path=partial_path)
    return run_cpu(quick)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write the rows here (on CUDA also updated after every measured shape)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"CUDA mode: wall-clock budget in seconds; work that would cross it is skipped with a "
                             f"note (default {DEFAULT_BUDGET_S:.0f})")
    args = parser.parse_args(argv)
    rows = run(args.device, args.quick, budget_s=args.budget_s, partial_path=args.json)
    for row in rows:
        print(json.dumps(row, default=str))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
