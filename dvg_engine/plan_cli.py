"""`dvg plan`: preview what DVG will do for one generation, or plan a file of cases.

    dvg plan --model hunyuan-video --height 720 --width 1280 --frames 129 --steps 50 --budget 0.5 \\
             --spatial-demand 0.3 --temporal-demand 0.3 [--json] [--plot tokens.png]
    dvg plan ... --x0 x0.npy            # demands computed from an x̂0 on the stage-0 latent grid
    dvg plan --cases cases.jsonl        # one JSON line out per line in (parity/planner.json format)

`dvg_engine.cli` wires `add_arguments` / `run` as the `plan` subcommand; `python -m
dvg_engine.plan_cli` runs it on its own. Exit codes: 0 success (also for infeasible cases in
`--cases`, which come out as lines with `error`), 2 usage errors and bad values (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Sequence

from . import planner as P

_MODEL_CHOICES = tuple(P.MODEL_ALIASES)
PROG = "dvg plan"


class UsageError(Exception):
    """A bad command line or argument value: reported as one line, exit code 2."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints the usage block on errors; the CLI contract is a single line and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `dvg plan` options to `parser` (an ArgumentParser or a subparser)."""
    grid = parser.add_argument_group("generation")
    grid.add_argument("--model", default="hunyuan-video", choices=_MODEL_CHOICES, metavar="MODEL",
                      help="hunyuan-video or hunyuan-video-1.5 (also hunyuan_video, hunyuan_video_1_5); "
                           "default %(default)s")
    grid.add_argument("--height", type=int, default=720, help="pixel height (default %(default)s)")
    grid.add_argument("--width", type=int, default=1280, help="pixel width (default %(default)s)")
    grid.add_argument("--frames", type=int, default=129, help="pixel frames, 4k+1 (default %(default)s)")
    grid.add_argument("--steps", type=int, default=50, help="sampling steps (default %(default)s)")
    grid.add_argument("--budget", type=float, default=0.5, help="token-step density budget in (0, 1] "
                                                                "(default %(default)s)")
    demands = parser.add_argument_group("demands (default: none given, S = M = 0, a 50/50 split)")
    demands.add_argument("--spatial-demand", type=float, metavar="S", help="spatial demand S in [0, 1]")
    demands.add_argument("--temporal-demand", type=float, metavar="M", help="temporal demand M = f/(1+f) in [0, 1]")
    demands.add_argument("--x0", metavar="FILE", help="x̂0 on the stage-0 latent grid, (B, C, T, H, W) in a .npy "
                                                      "or .pt file: the demands are computed from it")
    options = parser.add_argument_group("options")
    options.add_argument("--budget-accounting", choices=P.BUDGET_ACCOUNTINGS, default="reference",
                         help="step counts the density uses: the reference's accounting or the executed model "
                              "calls (Q2); default %(default)s")
    options.add_argument("--budget-fallback", choices=P.BUDGET_FALLBACKS, default="error",
                         help="infeasible budget: raise (default) or plan with the nearest feasible budget (Q3)")
    options.add_argument("--plan-scope", choices=P.PLAN_SCOPES, default="sample",
                         help="with a batched --x0: one plan per sample (default) or one pooled plan")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    out.add_argument("--cases", metavar="FILE.jsonl", help="plan every line of FILE (keys of parity/planner.json "
                                                           "inputs) and print one JSON line per input line")
    out.add_argument("--plot", metavar="PNG", help="draw tokens per step by stage into PNG")
    return parser


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog=prog, description="Preview the DVG stage plan of a generation.")
    return add_arguments(parser)


# --------------------------------------------------------------------------------------------------

def _err(message: str, stream=None) -> int:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=stream or sys.stderr)
    return 2


def _load_x0(path: str):
    import torch
    if not os.path.isfile(path):
        raise UsageError(f"--x0={path!r} is not a file; allowed: a .npy or .pt file holding a (B, C, T, H, W) array")
    lower = path.lower()
    try:
        if lower.endswith(".npy"):
            import numpy as np
            value = torch.from_numpy(np.load(path, allow_pickle=False))
        elif lower.endswith(".pt") or lower.endswith(".pth"):
            value = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise UsageError(f"--x0={path!r} has an unknown extension; allowed: .npy or .pt")
    except UsageError:
        raise
    except Exception as exc:  # unreadable file: report it as a bad argument value
        raise UsageError(f"--x0={path!r} could not be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(value, torch.Tensor):
        raise UsageError(f"--x0={path!r} holds a {type(value).__name__}; allowed: one tensor/array (B, C, T, H, W)")
    return value


def _plans(args) -> tuple:
    """(grid, plans, demands or None)."""
    grid = P.full_grid(args.model, args.height, args.width, args.frames)
    if args.x0 is not None:
        from .demands import compute_demands
        x0 = _load_x0(args.x0)
        budget_used = P.check_budget(grid, args.steps, args.budget, budget_accounting=args.budget_accounting,
                                     budget_fallback=args.budget_fallback)
        P.check_x0_shape(grid, args.steps, budget_used, x0, budget_accounting=args.budget_accounting)
        demands = compute_demands(x0, plan_scope=args.plan_scope)
        plans = P.plans_from_demands(grid, args.steps, args.budget, demands,
                                     budget_accounting=args.budget_accounting, budget_fallback=args.budget_fallback)
        return grid, plans, demands
    spatial = 0.0 if args.spatial_demand is None else args.spatial_demand
    temporal = 0.0 if args.temporal_demand is None else args.temporal_demand
    plan = P.plan_stages(grid, args.steps, args.budget, spatial, temporal,
                         budget_accounting=args.budget_accounting, budget_fallback=args.budget_fallback)
    return grid, [plan], None


def _shape(s: Sequence[int]) -> str:
    return "x".join(str(n) for n in s)


def format_table(plan: P.Plan, intervals, demands=None, demands_given: bool = True) -> str:
    """The human-readable preview of one plan."""
    g = plan.grid
    lines = [f"DVG plan: {g.model} {g.pipeline_height_px}x{g.pipeline_width_px} px, {g.num_frames} frames, "
             f"{plan.num_steps} steps, budget {plan.budget:g}"
             + (f" (planned with {plan.budget_used!r}: nearest feasible)" if plan.fallback else "")]
    T, H, W = g.latent_shape
    tt, th, tw = g.token_shape
    lines.append(f"full grid: latent {T}x{H}x{W}, tokens {tt}x{th}x{tw} = {tt * th * tw:,}; "
                 f"transition steps {list(plan.transition_steps)}")
    # "steps" are the reference's accounting counts (what the density weighs); "model calls" are what the
    # sampler runs at each stage's size (a transition step still runs at the old size, Q2).
    header = ("stage", "latent TxHxW", "tokens TxHxW", "tokens", "steps (accounting)", "model calls",
              "spatial rate", "frames rate")
    rows = []
    for k in range(P.NUM_STAGES):
        rows.append((str(k), _shape(plan.stage_shapes[k]), _shape(plan.token_shapes[k]),
                     f"{plan.tokens_per_stage[k]:,}", str(plan.stage_step_counts[k]),
                     str(plan.executed_model_calls[k]), f"{plan.spatial_rates[k]:g}",
                     f"{plan.temporal_rates[k]:.4g}"))
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    lines.append("")
    lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    lines.append("")
    gap = plan.density - plan.budget_used
    lines.append(f"density {plan.density:.6f} (budget {plan.budget_used:g}, gap {gap:+.6f}, tolerance ±"
                 f"{P.DENSITY_TOLERANCE}; accounting {plan.budget_accounting}); {plan.feasible_count} feasible "
                 f"candidates, chosen s2={plan.s2} t23={plan.t23} (score {plan.best_score:.6g})")
    if demands is not None:
        d = demands
        lines.append(f"demands from x0: S={d.S:.6g} f={d.f:.6g} M={d.M:.6g} -> split m_s={plan.m_s:.4f} "
                     f"m_t={plan.m_t:.4f}" + ("" if plan.demands_used else " (stage 0 has < 2 frames: ignored)"))
    else:
        note = "" if demands_given else " (no demands given)"
        if not plan.demands_used:
            note = " (stage 0 has < 2 frames: demands ignored)"
        lines.append(f"demands: S={plan.spatial_demand:g} M={plan.temporal_demand:g} -> split "
                     f"m_s={plan.m_s:.4f} m_t={plan.m_t:.4f}{note}")
    ratio = plan.token_steps / plan.full_token_steps
    lines.append(f"token-steps run: {plan.token_steps:,} of {plan.full_token_steps:,} ({100 * ratio:.1f}%), "
                 f"ideal token speed-up {1 / ratio:.2f}x")
    lines.append(f"feasible budgets: {P.format_intervals(intervals)}")
    if plan.fallback:
        lines.append(f"note: {plan.fallback}")
    return "\n".join(lines)


def plot_tokens(plans: Sequence[P.Plan], path: str) -> None:
    """Tokens per model call (step) coloured by stage, one panel per distinct plan, with the full grid
    as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unique = list(dict.fromkeys(plans))
    fig, axes = plt.subplots(len(unique), 1, figsize=(8, 3.2 * len(unique)), squeeze=False)
    colors = ("#4C72B0", "#DD8452", "#55A868", "#C44E52")
    for ax, plan in zip(axes[:, 0], unique):
        stages = plan.stage_of_step
        tokens = [plan.tokens_per_stage[s] for s in stages]
        for k in range(P.NUM_STAGES):
            xs = [i for i, s in enumerate(stages) if s == k]
            if xs:
                ax.bar(xs, [tokens[i] for i in xs], width=0.9, color=colors[k],
                       label=f"stage {k}: {_shape(plan.token_shapes[k])} ({len(xs)} steps)")
        t, h, w = plan.grid.token_shape
        ax.axhline(t * h * w, color="k", linestyle="--", linewidth=1, label=f"full grid {t}x{h}x{w}")
        ax.set_ylim(0, 1.45 * t * h * w)  # headroom so the legend does not cover the bars
        ax.set_xlabel("step")
        ax.set_ylabel("tokens per model call")
        ax.set_title(f"{plan.grid.model} {plan.grid.pipeline_height_px}x{plan.grid.pipeline_width_px}x"
                     f"{plan.grid.num_frames}f, budget {plan.budget_used:g}: "
                     f"{100 * plan.token_steps / plan.full_token_steps:.1f}% of the token-steps")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _run_cases(args) -> int:
    try:
        handle = open(args.cases, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--cases={args.cases!r} cannot be read ({exc.strerror})") from exc
    bad: List[str] = []
    out = sys.stdout
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                case = json.loads(line)
                inputs = case["inputs"] if isinstance(case, dict) and isinstance(case.get("inputs"), dict) else case
                result = P.case_outputs(inputs, budget_accounting=args.budget_accounting,
                                        budget_fallback=args.budget_fallback)
            except (ValueError, TypeError, KeyError) as exc:
                message = f"line {number}: {' '.join(str(exc).split())}"
                bad.append(message)
                result = {"error": message, "error_where": "input"}
            out.write(json.dumps(result) + "\n")
    out.flush()
    if bad:
        return _err(f"{len(bad)} invalid input line(s) in {args.cases} (first: {bad[0]})")
    return 0


def run(args: argparse.Namespace) -> int:
    """Execute `dvg plan` for parsed `args`; returns the exit code."""
    try:
        if args.cases is not None:
            conflicting = [flag for flag, value in (("--x0", args.x0), ("--spatial-demand", args.spatial_demand),
                                                    ("--temporal-demand", args.temporal_demand),
                                                    ("--plot", args.plot)) if value is not None]
            if conflicting:
                raise UsageError(f"--cases cannot be combined with {', '.join(conflicting)} (each line carries "
                                 f"its own demands)")
            return _run_cases(args)
        given = [args.spatial_demand is not None, args.temporal_demand is not None]
        if args.x0 is not None and any(given):
            raise UsageError("--x0 cannot be combined with --spatial-demand/--temporal-demand: give either the "
                             "demands or an x0 file to compute them from")
        if any(given) and not all(given):
            missing = "--temporal-demand" if given[0] else "--spatial-demand"
            raise UsageError(f"{missing} is required with {'--spatial-demand' if given[0] else '--temporal-demand'}")
        grid, plans, demands = _plans(args)
        intervals = P.feasible_budget_intervals(grid, args.steps, args.budget_accounting)
        if args.plot:
            plot_tokens(plans, args.plot)
        if args.json:
            def one(i: int) -> dict:
                data = plans[i].to_dict()
                data["feasible_budgets"] = [list(iv) for iv in intervals]
                if demands is not None:
                    data["demands"] = demands[i].to_dict()
                return data
            if len(plans) == 1:
                payload = one(0)
            else:
                payload = {"plan_scope": args.plan_scope, "plans": [one(i) for i in range(len(plans))]}
            print(json.dumps(payload))
        else:
            blocks = []
            for i, plan in enumerate(plans):
                if i and plan is plans[i - 1] and args.plan_scope == "batch":
                    continue
                title = f"sample {i}:\n" if len(plans) > 1 and args.plan_scope == "sample" else ""
                blocks.append(title + format_table(plan, intervals, None if demands is None else demands[i],
                                                   demands_given=all(given)))
            print("\n\n".join(blocks))
            if args.plot:
                print(f"plot: {args.plot}")
        return 0
    except (UsageError, ValueError, TypeError) as exc:
        return _err(str(exc))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
