"""`dvg demo`: DVG against the unmodified pipeline on the embedded tiny HunyuanVideo (nothing downloaded).

The same prompts (one video each, one seed per video) are generated twice with the same random-weight
pipeline: first unmodified, then after `compile_pipeline`. Written to the output folder:

    baseline.mp4   the unmodified pipeline's videos, side by side
    dvg.mp4        DVG's videos, side by side
    compare.mp4    a grid: one row per prompt, baseline | DVG (compare.gif when ffmpeg is missing)
    plan.png       tokens per step by stage, one panel per video, with the chosen space/time split
    report.json    settings, per-video demands/plan/token-steps/attention FLOPs, timings, the engine report

Timing: wall time of each whole pipeline call (prompt encoding, denoising, VAE decode) and, separately,
the time spent inside the transformer (forward hooks), which is what DVG shrinks. Both runs see the
same machine one after the other; on a loaded machine the ratio is the number to read.

With `image=` the embedded tiny HunyuanVideo image-to-video pipeline runs instead (its Llava prompt encoder
sees the image; every prompt starts from the same image).

The model has random weights, so the videos show the mechanics (sizes, stages, timing), not image quality.
"""
from __future__ import annotations

import pathlib
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

DEFAULT_OUT = "outputs/demo"
DEFAULT_BUDGET = 0.5
DEFAULT_STEPS = 16
DEFAULT_HEIGHT = 256
DEFAULT_WIDTH = 256
DEFAULT_FRAMES = 49
DEFAULT_FPS = 12.0
DEFAULT_PROMPTS = ("a horse galloping across an open field, camera tracking",
                   "a calm mountain lake at sunset, slow drifting clouds")
RANDOM_WEIGHTS_NOTE = ("The embedded model has RANDOM weights: the videos show the mechanics of DVG (stage sizes, "
                       "plans, timing), not image quality. Point `dvg generate --model` at a real checkpoint for "
                       "real videos.")

__all__ = ["run_demo", "format_table", "DEFAULT_PROMPTS", "RANDOM_WEIGHTS_NOTE"]


class _TransformerTimer:
    """Sums the wall time spent inside `module.forward` (CPU: no device sync needed; CUDA: synchronised)."""

    def __init__(self, module) -> None:
        self.total = 0.0
        self.calls = 0
        self._start = None
        self._handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _sync(self, tensors) -> None:
        import torch
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.is_cuda:
                torch.cuda.synchronize(t.device)
                return

    def _pre(self, module, args):
        self._sync(args)
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        self._sync(output if isinstance(output, (tuple, list)) else [output])
        self.total += time.perf_counter() - self._start
        self.calls += 1

    def reset(self) -> None:
        self.total, self.calls = 0.0, 0

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _check_inputs(budget: float, steps: int, height: int, width: int, frames: int) -> None:
    """Fail before building anything: infeasible budget (with the feasible set) or too few steps."""
    from . import planner
    grid = planner.full_grid(planner.HUNYUAN_VIDEO, height, width, frames)
    transitions = planner.transition_steps(steps)
    if len(transitions) < 3 or transitions[-1] >= steps - 1:
        raise ValueError(f"steps={steps} gives the transition steps {list(transitions)}: DVG needs three distinct "
                         f"transitions before the last step; allowed: at least 5 steps")
    planner.check_budget(grid, steps, budget)


def run_demo(*, out_dir: str = DEFAULT_OUT, budget: float = DEFAULT_BUDGET, steps: int = DEFAULT_STEPS,
             seed: int = 0, height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH, frames: int = DEFAULT_FRAMES,
             prompts: Optional[Sequence[str]] = None, backend: str = "auto", threads: Optional[int] = None,
             progress: bool = True, fps: float = DEFAULT_FPS, stream=None, image=None) -> Dict[str, Any]:
    """Run the demo and write its outputs into `out_dir`; returns the report (also in report.json).

    prompts: default two built-in prompts; video i uses a generator seeded `seed + i`, in both runs.
    image: None (text-to-video), or a start image (a path or a PIL image) for the tiny HunyuanVideo
    image-to-video pipeline (latent_concat: the pipeline drops the 4 frames decoded from the image frame).
    Raises ValueError (planner.InfeasibleBudgetError for a budget with no feasible plan) before any
    model is built.
    """
    import torch

    from ._checks import check_choice, check_int, fail
    from .cli import to_jsonable, write_json
    from .plots import plot_plan
    from .tiny import tiny_hunyuan_video_i2v_pipeline, tiny_hunyuan_video_pipeline
    from .video import tile_videos, write_compare, write_video

    stream = stream or sys.stdout
    prompts = list(prompts) if prompts else list(DEFAULT_PROMPTS)
    if not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"prompts={prompts!r} is invalid; allowed: non-empty strings")
    seed = check_int("seed", seed, minimum=0)
    check_choice("backend", backend, ("auto", "torch", "triton", "cpp"))
    _check_inputs(budget, steps, height, width, frames)
    image_label = None
    if image is not None:
        from PIL import Image
        if isinstance(image, (str, pathlib.Path)):
            if not pathlib.Path(image).is_file():
                raise ValueError(f"image={str(image)!r} does not exist; allowed: an image file or a PIL image")
            image_label, image = str(image), Image.open(image).convert("RGB")
        elif isinstance(image, Image.Image):
            image_label, image = "PIL image", image.convert("RGB")
        else:
            fail("image", image, "None, an image file path or a PIL image")
    if threads is not None:
        torch.set_num_threads(check_int("threads", threads, minimum=1))
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    kind = "HunyuanVideo" if image is None else "HunyuanVideo image-to-video"
    say(f"dvg demo: embedded tiny {kind}, {len(prompts)} prompts, {width}x{height} px, {frames} frames, "
        f"{steps} steps, budget {budget}, {torch.get_num_threads()} CPU threads")
    say(f"note: {RANDOM_WEIGHTS_NOTE}")
    build_start = time.perf_counter()
    pipe = tiny_hunyuan_video_pipeline(seed=0) if image is None else tiny_hunyuan_video_i2v_pipeline(seed=0)
    say(f"[1/4] built the pipeline from configs in {time.perf_counter() - build_start:.1f} s "
        f"({sum(p.numel() for p in pipe.transformer.parameters()) / 1e6:.1f} M transformer parameters, "
        f"{pipe.transformer.config.num_attention_heads} heads x {pipe.transformer.config.attention_head_dim})")
    timer = _TransformerTimer(pipe.transformer)

    def call(label: str):
        pipe.set_progress_bar_config(disable=not progress, desc=label, leave=False)
        generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))]
        timer.reset()
        start, cpu_start = time.perf_counter(), time.process_time()
        # HunyuanVideo I2V's Llava encodes one image per prompt (it cannot share one image across prompts)
        conditioning = {} if image is None else {"image": [image] * len(prompts)}
        output = pipe(prompt=prompts, height=height, width=width, num_frames=frames, num_inference_steps=steps,
                      generator=generators, output_type="np", **conditioning)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        return output.frames, {"wall": wall, "cpu": cpu, "transformer": timer.total, "transformer_calls": timer.calls}

    say("[2/4] generating with the unmodified pipeline ...")
    baseline_frames, baseline_time = call("baseline")

    from .engine import compile_pipeline
    compile_pipeline(pipe, budget=budget, backend=backend)
    say("[3/4] generating with DVG (compile_pipeline) ...")
    dvg_frames, dvg_time = call("DVG")
    engine_report = pipe.dvg.last_report
    timer.remove()

    say("[4/4] writing videos, plot and report ...")
    baseline_videos = [baseline_frames[i] for i in range(len(prompts))]
    dvg_videos = _videos(dvg_frames, len(prompts))
    labels = [f"video {i}" for i in range(len(prompts))]
    outputs = {
        "baseline": write_video(out / "baseline.mp4", tile_videos(baseline_videos, labels=labels), fps=fps),
        "dvg": write_video(out / "dvg.mp4", tile_videos(dvg_videos, labels=labels), fps=fps),
        "compare": write_compare(out / "compare.mp4", [[b, d] for b, d in zip(baseline_videos, dvg_videos)],
                                 column_labels=("baseline", "DVG"), row_labels=labels, fps=fps),
    }
    samples = []
    for i, (prompt, sample) in enumerate(zip(prompts, engine_report["samples"])):
        samples.append({
            "prompt": prompt, "seed": seed + i, "demands": sample["demands"], "chosen": sample["chosen"],
            "stage_shapes": sample["stage_shapes"], "tokens_per_stage": sample["tokens_per_stage"],
            "token_steps": sample["token_steps"], "full_token_steps": sample["full_token_steps"],
            "token_step_ratio": sample["token_step_ratio"], "attention_flop_ratio": sample["attention_flop_ratio"],
        })
    outputs["plan"] = plot_plan(engine_report["samples"], out / "plan.png",
                                labels=[f"video {i}: {_shorten(p, 48)}" for i, p in enumerate(prompts)],
                                title=f"DVG plans (budget {budget}, {steps} steps, {width}x{height}x{frames})")
    report = {
        "schema": "dvg-demo/1",
        "note": RANDOM_WEIGHTS_NOTE,
        "settings": {"budget": budget, "steps": steps, "seed": seed, "height": height, "width": width,
                     "frames": frames, "prompts": prompts, "backend": backend, "threads": torch.get_num_threads(),
                     "model": f"embedded tiny {kind} (random weights)", "image": image_label,
                     "transformer": {k: pipe.transformer.config[k] for k in (
                         "num_attention_heads", "attention_head_dim", "num_layers", "num_single_layers")}},
        "samples": samples,
        "time_s": {"baseline": baseline_time, "dvg": dvg_time,
                   "dvg_loop": engine_report["time_s"].get("loop"),
                   "dvg_transitions": engine_report["time_s"].get("transitions")},
        "speedup": {"wall": baseline_time["wall"] / dvg_time["wall"],
                    "transformer": baseline_time["transformer"] / max(dvg_time["transformer"], 1e-12)},
        "outputs": {k: str(v) for k, v in outputs.items()},
        "dvg_report": to_jsonable(engine_report),
    }
    outputs["report"] = write_json(out / "report.json", report)
    report["outputs"]["report"] = outputs["report"]
    say("")
    say(format_table(report))
    say("")
    say("wrote: " + ", ".join(str(v) for v in outputs.values()))
    say(f"note: {RANDOM_WEIGHTS_NOTE}")
    return report


def _videos(frames, count: int) -> List[Any]:
    import numpy as np
    if isinstance(frames, list):  # samples that ended at different sizes (allow_fewer_stages only)
        return [np.asarray(f[0] if getattr(f, "ndim", 0) == 5 else f) for f in frames]
    return [frames[i] for i in range(count)]


def format_table(report: Dict[str, Any]) -> str:
    """The demo's summary: one row per video (demands, plan, token-steps and attention FLOPs vs full),
    then the measured times of both runs and the speedups."""
    header = ("video", "S (space)", "M (time)", "plan: s2, t23/T", "stage grids (latent t x h x w)",
              "token-steps", "attn FLOPs")
    rows = []
    for i, s in enumerate(report["samples"]):
        demands = s.get("demands") or {}
        chosen = s.get("chosen") or {}
        full_t = s["stage_shapes"][-1][0]
        rows.append((str(i), _num(demands.get("spatial_demand")), _num(demands.get("temporal_demand")),
                     f"{chosen.get('s2')}, {chosen.get('t23')}/{full_t}",
                     " > ".join("x".join(map(str, shape)) for shape in s["stage_shapes"]),
                     f"{100 * s['token_step_ratio']:.1f}%", f"{100 * s['attention_flop_ratio']:.1f}%"))
    widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    lines.append("(token-steps and attention FLOPs are DVG's share of the unmodified pipeline's)")
    b, d = report["time_s"]["baseline"], report["time_s"]["dvg"]
    lines.append("")
    lines.append(f"{'':10}{'wall (whole call)':>20}{'transformer':>14}{'CPU time':>12}")
    lines.append(f"{'baseline':10}{b['wall']:>18.2f} s{b['transformer']:>12.2f} s{b['cpu']:>10.2f} s")
    lines.append(f"{'DVG':10}{d['wall']:>18.2f} s{d['transformer']:>12.2f} s{d['cpu']:>10.2f} s")
    lines.append(f"{'speedup':10}{report['speedup']['wall']:>19.2f}x{report['speedup']['transformer']:>13.2f}x"
                 f"{b['cpu'] / max(d['cpu'], 1e-12):>11.2f}x")
    return "\n".join(lines)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"
