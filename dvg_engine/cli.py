"""The `dvg` command line: `demo`, `generate`, `plan`, `bench`.

    dvg demo [--out DIR] [--budget B] [--steps N] [--seed S]
    dvg generate --model ID_OR_PATH --prompt TEXT [...] --out video.mp4 [--baseline] [--report r.json]
    dvg plan --model hunyuan-video --height 720 --width 1280 --frames 129 --steps 50 --budget 0.5 ...
    dvg bench [--quick] [--gpu] [--results PATH] [--plot DIR]

Exit codes: 0 success; 2 bad usage or a bad argument value (one argparse-style line on stderr:
``dvg generate: error: ...``); 1 a runtime failure (one line naming the cause; the Python traceback
only with ``--debug``); 130 interrupted. Heavy imports (torch, diffusers) happen inside the
subcommands so ``dvg --help`` and ``dvg plan`` start fast.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence

PROG = "dvg"

SUPPORTED_PIPELINES = ("HunyuanVideoPipeline", "HunyuanVideoImageToVideoPipeline", "HunyuanVideo15Pipeline",
                       "HunyuanVideo15ImageToVideoPipeline")
# `--model tiny`, `tiny-i2v`, `tiny-1.5`, `tiny-1.5-i2v` select the embedded random-weight pipelines of
# `dvg_engine.tiny` (no download): CLI name -> (pipeline class, dvg_engine.tiny model name).
EMBEDDED = {"tiny": ("HunyuanVideoPipeline", "hunyuan-video"),
            "tiny-i2v": ("HunyuanVideoImageToVideoPipeline", "hunyuan-video-i2v"),
            "tiny-1.5": ("HunyuanVideo15Pipeline", "hunyuan-video-1.5"),
            "tiny-1.5-i2v": ("HunyuanVideo15ImageToVideoPipeline", "hunyuan-video-1.5-i2v")}
EMBEDDED_MODELS = {name: cls for name, (cls, _) in EMBEDDED.items()}
DTYPES = ("auto", "float32", "float16", "bfloat16")


class UsageError(Exception):
    """A bad command line or argument value: one line on stderr, exit code 2."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints the whole usage block on errors; the CLI contract is one line and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------------
# argument types: each names the flag's value and what is allowed (argparse adds the flag name)
# ---------------------------------------------------------------------------------------------------

def _number(kind, low=None, high=None, low_open=False, text=None):
    def parse(raw: str):
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not {'an integer' if kind is int else 'a number'}; "
                                             f"allowed: {text}") from None
        bad = (isinstance(value, float) and not math.isfinite(value)) or (low is not None and (
            value < low or (low_open and value == low))) or (high is not None and value > high)
        if bad:
            raise argparse.ArgumentTypeError(f"{raw} is out of range; allowed: {text}")
        return value
    return parse


_budget = _number(float, 0.0, 1.0, low_open=True, text="a number in (0, 1]")
_positive_int = _number(int, 1, text="an integer >= 1")
_seed = _number(int, 0, 2 ** 63 - 1, text="an integer in [0, 2**63-1]")
_non_negative = _number(float, 0.0, text="a number >= 0")
_fps = _number(float, 0.0, 240.0, low_open=True, text="a number in (0, 240]")


def _pixels(raw: str) -> int:
    value = _positive_int(raw)
    if value % 16:
        raise argparse.ArgumentTypeError(f"{value} is not a multiple of 16; allowed: a multiple of 16 (the VAE's "
                                         f"8x or 16x downsampling times the transformer's patch), e.g. "
                                         f"{max(16, value // 16 * 16)} or {value // 16 * 16 + 16}")
    return value


def _frames(raw: str) -> int:
    value = _positive_int(raw)
    if (value - 1) % 4:
        raise argparse.ArgumentTypeError(f"{value} is not of the form 4k+1; allowed: 4k+1 frames (the causal 4x "
                                         f"temporal VAE), e.g. {(value - 1) // 4 * 4 + 1} or {(value - 1) // 4 * 4 + 5}")
    return value


def _video_path(raw: str) -> str:
    if pathlib.Path(raw).suffix.lower() not in (".mp4", ".gif"):
        raise argparse.ArgumentTypeError(f"{raw!r} has an unsupported suffix; allowed: a .mp4 or .gif path")
    return raw


def _json_path(raw: str) -> str:
    if pathlib.Path(raw).suffix.lower() != ".json":
        raise argparse.ArgumentTypeError(f"{raw!r} is not a .json path; allowed: a path ending in .json")
    return raw


# ---------------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------------

def _common(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    # Subparser defaults overwrite the top level's in the namespace, so only the top level has a default:
    # `dvg --debug generate ...` and `dvg generate ... --debug` both work.
    parser.add_argument("--debug", action="store_true", default=False if top_level else argparse.SUPPRESS,
                        help="print the Python traceback on errors")


def _add_demo(sub) -> None:
    from . import demo as demo_defaults
    p = sub.add_parser("demo", help="DVG vs the unmodified pipeline on an embedded tiny HunyuanVideo "
                                    "(random weights, nothing downloaded)",
                       description="Generate the same prompts with the unmodified embedded tiny HunyuanVideo "
                                   "pipeline and with compile_pipeline, and write outputs/demo/{baseline.mp4, "
                                   "dvg.mp4, compare.mp4, plan.png, report.json}. The model has random weights: "
                                   "the videos show the mechanics, not image quality.")
    p.add_argument("--out", default=demo_defaults.DEFAULT_OUT, metavar="DIR", help="output folder (default %(default)s)")
    p.add_argument("--budget", type=_budget, default=demo_defaults.DEFAULT_BUDGET,
                   help="token-step density budget in (0, 1] (default %(default)s)")
    p.add_argument("--steps", type=_positive_int, default=demo_defaults.DEFAULT_STEPS,
                   help="denoising steps (default %(default)s)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the stage-0 noise; sample i uses seed+i "
                                                         "(default %(default)s)")
    p.add_argument("--height", type=_pixels, default=demo_defaults.DEFAULT_HEIGHT, help="default %(default)s")
    p.add_argument("--width", type=_pixels, default=demo_defaults.DEFAULT_WIDTH, help="default %(default)s")
    p.add_argument("--frames", type=_frames, default=demo_defaults.DEFAULT_FRAMES, help="default %(default)s")
    p.add_argument("--prompt", action="append", metavar="TEXT",
                   help="a prompt (repeat for several; default: two built-in prompts)")
    p.add_argument("--backend", choices=("auto", "torch", "triton", "cpp"), default="auto",
                   help="op implementation (default %(default)s; also DVG_BACKEND)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--image", metavar="PATH", help="a start image: run the embedded tiny HunyuanVideo image-to-video "
                                                  "pipeline (Llava prompt encoder) instead of text-to-video")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    _common(p)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate a video with DVG from a diffusers checkpoint (Hub id or folder)",
                       description="Load a HunyuanVideo / HunyuanVideo-1.5 pipeline (T2V or I2V) with "
                                   "DiffusionPipeline.from_pretrained (a Hub id or a local folder; HF_HUB_OFFLINE=1 "
                                   "uses only the local cache), compile it with DVG, generate, and write the video. "
                                   "--model tiny / tiny-i2v (HunyuanVideo T2V / I2V) or tiny-1.5 / tiny-1.5-i2v "
                                   "(HunyuanVideo-1.5) uses an embedded random-weight pipeline (no download).")
    p.add_argument("--model", required=True, metavar="ID_OR_PATH",
                   help="Hub id (e.g. hunyuanvideo-community/HunyuanVideo), a local pipeline folder, or one of "
                        + ", ".join(EMBEDDED) + " (embedded random-weight pipelines)")
    p.add_argument("--prompt", action="append", required=True, metavar="TEXT", help="prompt (repeat for a batch)")
    p.add_argument("--negative-prompt", metavar="TEXT", help="negative prompt (HunyuanVideo: used with "
                                                             "--true-cfg-scale > 1; HunyuanVideo-1.5: its CFG)")
    p.add_argument("--image", metavar="PATH", help="conditioning image (required for image-to-video pipelines)")
    p.add_argument("--height", type=_pixels, help="pixel height, a multiple of 16 (default: the pipeline's)")
    p.add_argument("--width", type=_pixels, help="pixel width, a multiple of 16 (default: the pipeline's)")
    p.add_argument("--frames", type=_frames, help="pixel frames, 4k+1 (default: the pipeline's)")
    p.add_argument("--steps", type=_positive_int, help="denoising steps (default: the pipeline's)")
    p.add_argument("--budget", type=_budget, default=0.5, help="token-step density budget in (0, 1] "
                                                               "(default %(default)s)")
    p.add_argument("--budget-fallback", choices=("error", "nearest"), default=None,
                   help="an infeasible budget: fail (default, stating the feasible budgets) or plan with the "
                        "nearest feasible one")
    p.add_argument("--seed", type=_seed, default=0, help="seed; video i uses a generator seeded seed+i (default 0)")
    p.add_argument("--guidance-scale", type=_non_negative, help="guidance scale (HunyuanVideo: embedded guidance; "
                                                                "HunyuanVideo-1.5: CFG scale); default: the pipeline's")
    p.add_argument("--true-cfg-scale", type=_non_negative, help="HunyuanVideo only: true CFG scale (> 1 enables it "
                                                                "with --negative-prompt)")
    p.add_argument("--num-videos", type=_positive_int, default=1, help="videos per prompt (default 1)")
    p.add_argument("--fps", type=_fps, default=24.0, help="frames per second of the written video (default 24)")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="weights dtype; auto = bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=("auto", "torch", "triton", "cpp"), default="auto",
                   help="op implementation (default %(default)s; also DVG_BACKEND)")
    p.add_argument("--out", type=_video_path, default="video.mp4",
                   help="output video (.mp4 or .gif); with several videos: OUT_0.mp4, OUT_1.mp4, ...")
    p.add_argument("--baseline", action="store_true",
                   help="also run the unmodified pipeline first (same seeds) and write OUT_baseline.mp4 and a "
                        "side-by-side OUT_compare.mp4, with both wall times")
    p.add_argument("--no-dvg", action="store_true", help="run only the unmodified pipeline (no DVG)")
    p.add_argument("--report", type=_json_path, metavar="REPORT.json", help="write the DVG report (plans, shapes, "
                                                                             "token-steps, timings) as JSON")
    p.add_argument("--plan", type=_json_path, metavar="PLAN.json",
                   help="replay a plan instead of planning from the content: a report written by --report, a "
                        "plan dict (Plan.to_dict), a list of them (one per video), or "
                        "{\"spatial_demand\": S, \"temporal_demand\": M}")
    p.add_argument("--plot", metavar="PNG", help="draw the tokens per step of each video's plan into PNG")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="any DVGConfig option, e.g. transition_noise=seeded or budget_fallback=nearest (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _common(p)


def _add_plan(sub) -> None:
    from . import plan_cli
    p = sub.add_parser("plan", help="preview the DVG stage plan of a generation (no model needed)",
                       description="Preview the DVG stage plan of a generation.")
    plan_cli.add_arguments(p)
    _common(p)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="run the benchmarks/bench_*.py modules and append the results to RESULTS.md",
                       description="Run each benchmarks/bench_*.py module's run(device, quick) and append a section "
                                   "(machine, date, commit, what was compared, ratios) to benchmarks/RESULTS.md "
                                   "or --results PATH.")
    p.add_argument("--quick", action="store_true", help="small shapes and few repeats (a minute or two)")
    p.add_argument("--gpu", action="store_true", help="run on CUDA (fails when no GPU is visible)")
    p.add_argument("--results", metavar="PATH", help="markdown file to append to (default benchmarks/RESULTS.md)")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this module (e.g. bench_attention); "
                                                                   "repeatable")
    p.add_argument("--bench-dir", metavar="DIR", help="folder of bench_*.py modules (default: the checkout's "
                                                      "benchmarks/)")
    p.add_argument("--plot", metavar="DIR", help="also draw one PNG chart per module that has something to draw "
                                                 "(e2e speedup and stage times, pack/LN %% of copy bandwidth, "
                                                 "resample speedup, attention TFLOP/s) into DIR, linked from the "
                                                 "appended section")
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog=PROG, description="DVG (Dynamic Video Generation) for HunyuanVideo and "
                                                          "HunyuanVideo-1.5 in diffusers.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"dvg_engine {__version__}")
    _common(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="{demo,generate,plan,bench}",
                                parser_class=OneLineArgumentParser)
    sub.required = True
    _add_demo(sub)
    _add_generate(sub)
    _add_plan(sub)
    _add_bench(sub)
    return parser


# ---------------------------------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------------------------------

def _cmd_demo(args) -> int:
    from . import demo, planner
    try:
        demo._check_inputs(args.budget, args.steps, args.height, args.width, args.frames)
    except planner.InfeasibleBudgetError as exc:
        raise UsageError(f"argument --budget: {_one_line(exc)}") from None
    except ValueError as exc:
        raise UsageError(f"argument --steps: {_one_line(exc)}" if "steps" in str(exc) else _one_line(exc)) from None
    if args.image is not None and not pathlib.Path(args.image).is_file():
        raise UsageError(f"argument --image: {args.image!r} does not exist; allowed: an image file")
    demo.run_demo(out_dir=args.out, budget=args.budget, steps=args.steps, seed=args.seed, height=args.height,
                  width=args.width, frames=args.frames, prompts=args.prompt, backend=args.backend,
                  threads=args.threads, progress=not args.no_progress, image=args.image)
    return 0


def _cmd_plan(args) -> int:
    from . import plan_cli
    return plan_cli.run(args)


def _cmd_bench(args) -> int:
    from . import bench
    try:
        return bench.main(quick=args.quick, gpu=args.gpu, results=args.results, only=args.only,
                          bench_dir=args.bench_dir, plot=args.plot)
    except ValueError as exc:  # only argument problems escape bench.main as ValueError (module errors are recorded)
        raise UsageError(_one_line(exc)) from None


def _parse_options(pairs: Sequence[str]) -> Dict[str, Any]:
    """`--option NAME=VALUE` pairs, typed after the DVGConfig field's default (bool, int, float, str, tuple)."""
    import dataclasses
    from .config import DVGConfig
    fields = {f.name: f for f in dataclasses.fields(DVGConfig)}
    reserved = {"budget": "--budget", "backend": "--backend", "plan": "--plan", "enabled": "--no-dvg"}
    out: Dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            raise UsageError(f"argument --option: {pair!r} is invalid; allowed: NAME=VALUE with NAME one of "
                             f"{', '.join(sorted(set(fields) - set(reserved)))}")
        if name in reserved:
            raise UsageError(f"argument --option: {name} is set with {reserved[name]}; allowed: the other options")
        default = fields[name].default
        try:
            if isinstance(default, bool):
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value: Any = raw.lower() in ("true", "1", "yes")
            elif isinstance(default, int):
                value = int(raw)
            elif isinstance(default, float):
                value = float(raw)
            elif isinstance(default, tuple):
                value = tuple(float(x) for x in raw.split(","))
            else:
                value = raw
        except ValueError:
            raise UsageError(f"argument --option: {name}={raw!r} is not a valid "
                             f"{type(default).__name__}") from None
        out[name] = value
    try:
        DVGConfig(**out)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"argument --option: {_one_line(exc)}") from None
    return out


def _pipeline_class_name(model: str) -> Optional[str]:
    """The `_class_name` of a local pipeline folder's model_index.json (None for Hub ids)."""
    index = pathlib.Path(model) / "model_index.json"
    if not index.is_file():
        return None
    try:
        return json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"cannot read {index}: {_one_line(exc)}") from None


def _resolve_device_dtype(device_arg: str, dtype_arg: str):
    import torch
    if device_arg == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(device_arg)
        except (RuntimeError, ValueError):
            raise UsageError(f"argument --device: {device_arg!r} is invalid; allowed: auto, cpu, cuda, cuda:N") from None
        if device.type not in ("cpu", "cuda"):
            raise UsageError(f"argument --device: {device_arg!r} is invalid; allowed: auto, cpu, cuda, cuda:N")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"argument --device: {device_arg!r} is invalid here: no CUDA device is visible; "
                             f"allowed: cpu or auto")
    if dtype_arg == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, dtype_arg)
    return device, dtype


def _load_json(path: str, flag: str) -> Any:
    try:
        return json.loads(pathlib.Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"argument {flag}: {path!r} does not exist; allowed: an existing JSON file") from None
    except ValueError as exc:
        raise UsageError(f"argument {flag}: {path!r} is not valid JSON ({_one_line(exc)})") from None


def _plan_from_file(data: Any) -> Any:
    """What `compile_pipeline(plan=...)` takes, from a --plan file: a report written by --report / dvg demo
    (its samples' plans), a plan dict, a list of plan dicts, or explicit demands."""
    if isinstance(data, dict) and isinstance(data.get("dvg_report"), dict):
        data = data["dvg_report"]
    if isinstance(data, dict) and isinstance(data.get("samples"), list):
        plans = [s.get("plan") for s in data["samples"] if isinstance(s, dict)]
        if not plans or any(p is None for p in plans):
            raise UsageError("argument --plan: the report holds no per-sample plans (was DVG enabled?)")
        return plans if len(plans) > 1 else plans[0]
    if isinstance(data, dict) and ("stage_shapes" in data or {"spatial_demand", "temporal_demand"} <= set(data)):
        return data
    if isinstance(data, list) and data and all(isinstance(p, dict) for p in data):
        return data
    raise UsageError("argument --plan: unrecognised content; allowed: a report from --report, a plan dict, a list "
                     "of plan dicts, or {\"spatial_demand\": S, \"temporal_demand\": M}")


def _output_paths(out: str, count: int, tag: str = "") -> List[str]:
    path = pathlib.Path(out)
    stem = path.stem + (f"_{tag}" if tag else "")
    if count == 1:
        return [str(path.with_name(stem + path.suffix))]
    return [str(path.with_name(f"{stem}_{i}{path.suffix}")) for i in range(count)]


def _call_kwargs(pipe, args, batch: int, image) -> Dict[str, Any]:
    import inspect
    import torch
    params = inspect.signature(type(pipe).__call__).parameters
    kwargs: Dict[str, Any] = {"prompt": args.prompt if len(args.prompt) > 1 else args.prompt[0],
                              "num_videos_per_prompt": args.num_videos, "output_type": "np"}
    for flag, name in (("height", "height"), ("width", "width"), ("frames", "num_frames"),
                       ("steps", "num_inference_steps"), ("guidance_scale", "guidance_scale"),
                       ("negative_prompt", "negative_prompt"), ("true_cfg_scale", "true_cfg_scale")):
        value = getattr(args, flag)
        if value is None:
            continue
        if name == "guidance_scale" and name not in params and getattr(pipe, "guider", None) is not None:
            # HunyuanVideo-1.5 takes its CFG scale from the pipeline's guider, not from __call__.
            pipe.guider = pipe.guider.new(guidance_scale=value)
            continue
        if name not in params:
            raise UsageError(f"argument --{flag.replace('_', '-')}: not supported by {type(pipe).__name__}")
        kwargs[name] = value
    if image is not None:
        kwargs["image"] = image
        if type(pipe).__name__ == "HunyuanVideoImageToVideoPipeline" and batch > 1:
            # diffusers' HunyuanVideo I2V encodes the image inside the prompt (Llava) once per image and never
            # repeats its embeddings per video: several prompts with one image, or num_videos_per_prompt > 1,
            # fail inside the pipeline. One (prompt, image) pair per video gives the same batch, in the same
            # prompt-major order as num_videos_per_prompt.
            if args.negative_prompt is not None and (args.true_cfg_scale or 1.0) > 1.0:
                raise UsageError(f"argument --negative-prompt: {type(pipe).__name__} encodes its negative prompt "
                                 f"with one black image, so true CFG works for one video per call; allowed: one "
                                 f"--prompt and --num-videos 1 with --negative-prompt and --true-cfg-scale > 1")
            kwargs["prompt"] = [p for p in args.prompt for _ in range(args.num_videos)]
            kwargs["image"] = [image] * batch
            kwargs["num_videos_per_prompt"] = 1
    # One CPU generator per video: the same seeds give the same stage-0 noise on any device.
    kwargs["generator"] = [torch.Generator("cpu").manual_seed(args.seed + i) for i in range(batch)]
    return kwargs


def _resolved_geometry(pipe, kwargs) -> Dict[str, int]:
    import inspect
    params = inspect.signature(type(pipe).__call__).parameters
    out = {}
    for name in ("height", "width", "num_frames", "num_inference_steps"):
        value = kwargs.get(name, params[name].default if name in params else None)
        out[name] = value
    return out


def _timed_call(pipe, kwargs, device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    output = pipe(**kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return output.frames, time.perf_counter() - start


def _videos(frames) -> list:
    """Pipeline frames (output_type="np": (B, F, H, W, 3), or a list of such per sample) as a list of videos."""
    import numpy as np
    if isinstance(frames, list):
        return [np.asarray(f[0] if getattr(f, "ndim", 0) == 5 else f) for f in frames]
    return [frames[i] for i in range(frames.shape[0])]


def _cmd_generate(args) -> int:
    options = _parse_options(args.option)
    if args.budget_fallback is not None:
        if options.get("budget_fallback", args.budget_fallback) != args.budget_fallback:
            raise UsageError("argument --budget-fallback: conflicts with --option budget_fallback=...")
        options["budget_fallback"] = args.budget_fallback
    if args.no_dvg and (args.baseline or args.plan or options):
        raise UsageError("argument --no-dvg: cannot be combined with --baseline, --plan or --option")
    plan = _plan_from_file(_load_json(args.plan, "--plan")) if args.plan else None
    if args.image is not None and not pathlib.Path(args.image).is_file():
        raise UsageError(f"argument --image: {args.image!r} does not exist; allowed: an image file")
    device, dtype = _resolve_device_dtype(args.device, args.dtype)
    embedded = args.model in EMBEDDED_MODELS
    if not embedded and not pathlib.Path(args.model).exists() and (
            args.model.startswith((".", "/", "~")) or args.model.count("/") > 1):
        raise UsageError(f"argument --model: {args.model!r} is neither a local folder nor a Hub id; allowed: "
                         f"owner/name, an existing folder, or one of {', '.join(EMBEDDED_MODELS)}")
    class_name = EMBEDDED_MODELS[args.model] if embedded else _pipeline_class_name(args.model)
    if class_name is not None and class_name not in SUPPORTED_PIPELINES:
        raise UsageError(f"argument --model: {args.model!r} holds a {class_name}; allowed: "
                         f"{', '.join(SUPPORTED_PIPELINES)}")

    if class_name is not None:
        _check_image_flag(class_name, args.image)  # before loading any weights
    known_geometry = {"height": args.height, "width": args.width, "num_frames": args.frames,
                      "num_inference_steps": args.steps}
    if class_name is not None and not args.no_dvg and None not in known_geometry.values():
        _check_budget_early(class_name, known_geometry, args.budget, options)  # before loading any weights

    import torch
    progress = not args.no_progress
    if not args.debug:
        _quiet_library_logs()
    _status(f"loading {args.model} ({dtype}, {device}) ...")
    if embedded:
        from . import tiny
        pipe = tiny.build_tiny_pipeline(EMBEDDED[args.model][1], dtype=dtype)
    else:
        import warnings
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as diffusers_logging
        if not progress:
            diffusers_logging.disable_progress_bar()
            try:
                from transformers.utils import logging as transformers_logging
                transformers_logging.disable_progress_bar()
            except ImportError:
                pass
        try:
            with warnings.catch_warnings():
                # diffusers 0.42 renames torch_dtype to dtype; the old name works across the supported range.
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype)
        except (OSError, EnvironmentError) as exc:
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
            hint = " (HF_HUB_OFFLINE is set: only the local cache is used)" if offline else ""
            raise RuntimeError(f"cannot load {args.model!r}{hint}: {_one_line(exc)}") from exc
    name = type(pipe).__name__
    if name not in SUPPORTED_PIPELINES:
        raise UsageError(f"argument --model: {args.model!r} loads a {name}; allowed: {', '.join(SUPPORTED_PIPELINES)}")
    _check_image_flag(name, args.image)
    image = None
    if args.image is not None:
        from PIL import Image
        image = Image.open(args.image).convert("RGB")
    pipe.to(device)
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    batch = len(args.prompt) * args.num_videos
    if name.startswith("HunyuanVideo15") and batch > 1 and hasattr(pipe.vae, "enable_slicing"):
        # diffusers 0.42's HunyuanVideo-1.5 VAE attention mis-broadcasts its causal mask for a batch of more
        # than one video: decode one at a time.
        pipe.vae.enable_slicing()
    kwargs = _call_kwargs(pipe, args, batch, image)
    geometry = _resolved_geometry(pipe, kwargs)
    if not args.no_dvg:
        _check_budget_early(name, geometry, args.budget, options)

    from .video import write_compare, write_video
    result: Dict[str, Any] = {"schema": "dvg-generate/1", "model": args.model, "pipeline": name,
                              "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                              "prompts": list(args.prompt), "seed": args.seed, "geometry": geometry,
                              "call": {k: v for k, v in kwargs.items() if k not in ("generator", "image", "prompt")},
                              "time_s": {}}
    if getattr(pipe, "guider", None) is not None and hasattr(pipe.guider, "guidance_scale"):
        result["call"]["guider_guidance_scale"] = pipe.guider.guidance_scale
    baseline_videos = None
    if args.baseline or args.no_dvg:
        _status("generating with the unmodified pipeline ...")
        frames, seconds = _timed_call(pipe, dict(kwargs, generator=[torch.Generator("cpu").manual_seed(args.seed + i)
                                                                    for i in range(batch)]), device)
        baseline_videos = _videos(frames)
        result["time_s"]["baseline"] = seconds
        paths = _output_paths(args.out, len(baseline_videos), "" if args.no_dvg else "baseline")
        for path, video in zip(paths, baseline_videos):
            write_video(path, video, fps=args.fps)
        result["baseline_videos"] = paths
        _status(f"baseline: {seconds:.2f} s -> {', '.join(paths)}")
        if args.no_dvg:
            _finish_generate(args, result)
            return 0

    from .engine import compile_pipeline
    compile_pipeline(pipe, budget=args.budget, backend=args.backend, plan=plan, **options)
    _status(f"generating with DVG (budget {args.budget}) ...")
    frames, seconds = _timed_call(pipe, kwargs, device)
    videos = _videos(frames)
    report = pipe.dvg.last_report
    result["time_s"]["dvg"] = seconds
    result["dvg_report"] = report
    paths = _output_paths(args.out, len(videos))
    for path, video in zip(paths, videos):
        write_video(path, video, fps=args.fps)
    result["videos"] = paths
    if baseline_videos is not None:
        compare = write_compare(_output_paths(args.out, 1, "compare")[0], [[b, d] for b, d in zip(baseline_videos, videos)],
                                column_labels=("baseline", "DVG"), row_labels=[f"video {i}" for i in range(len(videos))],
                                fps=args.fps)
        result["compare_video"] = compare
        result["speedup"] = result["time_s"]["baseline"] / seconds
    if args.plot and report and report.get("samples"):
        from .plots import plot_plan
        result["plot"] = plot_plan(report["samples"], args.plot,
                                   labels=[f"video {i}" for i in range(len(report["samples"]))])
    print(format_generate_summary(result))
    _finish_generate(args, result)
    return 0


def _quiet_library_logs() -> None:
    """Library advice (install accelerate, guiders are experimental, ...) is not the CLI's output; errors
    still show. --debug keeps everything."""
    from diffusers.utils import logging as diffusers_logging
    diffusers_logging.set_verbosity_error()
    try:
        from transformers.utils import logging as transformers_logging
        transformers_logging.set_verbosity_error()
    except ImportError:
        pass


def _check_image_flag(class_name: str, image: Optional[str]) -> None:
    i2v = "ImageToVideo" in class_name
    if i2v and image is None:
        raise UsageError(f"argument --image: required for {class_name} (image-to-video)")
    if not i2v and image is not None:
        raise UsageError(f"argument --image: {class_name} is text-to-video; allowed: --image only with an "
                         f"image-to-video pipeline")


def _check_budget_early(class_name: str, geometry: Dict[str, int], budget: float, options: Dict[str, Any]) -> None:
    """An infeasible budget is a bad --budget value: say so (exit 2) before any model compute."""
    from . import planner
    model = "hunyuan_video_1_5" if class_name.startswith("HunyuanVideo15") else "hunyuan_video"
    if None in geometry.values():
        return
    try:
        grid = planner.full_grid(model, geometry["height"], geometry["width"], geometry["num_frames"])
        planner.check_budget(grid, geometry["num_inference_steps"], budget,
                             budget_accounting=options.get("budget_accounting", "reference"),
                             budget_fallback=options.get("budget_fallback", "error"))
    except planner.InfeasibleBudgetError as exc:
        raise UsageError(f"argument --budget: {_one_line(exc)}") from None


def _finish_generate(args, result: Dict[str, Any]) -> None:
    if args.report:
        write_json(args.report, result)
        _status(f"report: {args.report}")


def format_generate_summary(result: Dict[str, Any]) -> str:
    lines = [f"DVG {result['pipeline']}: {', '.join(result.get('videos', []))}  ({result['time_s']['dvg']:.2f} s)"]
    report = result.get("dvg_report") or {}
    if report.get("budget_used") is not None and report.get("budget_used") != report.get("budget"):
        lines.append(f"  budget {report.get('budget')} is infeasible here: planned with the nearest feasible budget "
                     f"{report['budget_used']:.6g}")
    for i, sample in enumerate(report.get("samples") or []):
        if not sample:
            continue
        chosen = sample.get("chosen") or {}
        demands = sample.get("demands") or {}
        lines.append(f"  video {i}: S={_fmt(demands.get('spatial_demand'))} M={_fmt(demands.get('temporal_demand'))}"
                     f"  plan s2={chosen.get('s2')} t23={chosen.get('t23')}  stages "
                     f"{' -> '.join('x'.join(map(str, s)) for s in sample.get('stage_shapes', []))}"
                     f"  token-steps {_pct(sample.get('token_step_ratio'))}  attention FLOPs "
                     f"{_pct(sample.get('attention_flop_ratio'))} of full")
    if "speedup" in result:
        lines.append(f"  baseline {result['time_s']['baseline']:.2f} s, DVG {result['time_s']['dvg']:.2f} s: "
                     f"{result['speedup']:.2f}x")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def to_jsonable(value: Any) -> Any:
    """Reports as plain JSON: dataclasses/objects with to_dict, tensors and numpy values to lists/numbers,
    tuples to lists, non-finite floats to null (JSON has no NaN)."""
    import dataclasses
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "to_dict"):
        return to_jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if hasattr(value, "tolist"):
        return to_jsonable(value.tolist())
    if hasattr(value, "item"):
        return to_jsonable(value.item())
    return str(value)


def write_json(path, data: Any) -> str:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(data), indent=2) + "\n")
    return str(path)


# ---------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------

_COMMANDS = {"demo": _cmd_demo, "generate": _cmd_generate, "plan": _cmd_plan, "bench": _cmd_bench}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `dvg`; returns the exit code (the console script passes it to sys.exit)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"{PROG} {args.command}"
    try:
        return int(_COMMANDS[args.command](args) or 0)
    except UsageError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:
        if type(exc).__name__ != "InfeasibleBudgetError":
            return _runtime_failure(prog, exc, args.debug)
        # Found only once the pipeline told us its default geometry: still a bad --budget value.
        if args.debug:
            traceback.print_exc()
        print(f"{prog}: error: argument --budget: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # the CLI contract: one line naming the cause, traceback only with --debug
        return _runtime_failure(prog, exc, args.debug)


def _runtime_failure(prog: str, exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    cause = _one_line(exc) or type(exc).__name__
    print(f"{prog}: error: {type(exc).__name__}: {cause}" + ("" if debug else " (rerun with --debug for the traceback)"),
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
