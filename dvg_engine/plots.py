"""Plots of DVG plans (matplotlib, Agg backend: no display needed).

`plot_plan(plans, path)` draws, for each sample, the latent tokens the transformer processes at every
executed denoising step, coloured by stage, against the full-size baseline; the chosen space/time
split (stage-1 spatial rate s2 and stage-1/2 frame count t23) is written on each panel, and the
area saved is shaded. Used by `dvg demo` (plan.png), `dvg generate --plot` and `dvg plan --plot`.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, List, Mapping, Optional, Sequence, Union

__all__ = ["plan_as_dict", "tokens_per_step", "plot_plan", "STAGE_COLOURS"]

STAGE_COLOURS = ("#4C72B0", "#55A868", "#DD8452", "#C44E52")


def plan_as_dict(plan: Any) -> dict:
    """A `dvg_engine.planner.Plan`, its `to_dict()`, or a report sample holding one under "plan" (and its
    demands under "demands"),
    as a plain dict with at least `token_shapes` (4×[t, h, w]) and `executed_model_calls` (4 ints)."""
    if hasattr(plan, "to_dict") and not isinstance(plan, Mapping):
        plan = plan.to_dict()
    if not isinstance(plan, Mapping):
        raise TypeError(f"plan={plan!r:.80} is invalid; allowed: a planner Plan or its to_dict() dict")
    if "token_shapes" not in plan and isinstance(plan.get("plan"), Mapping):
        # A report sample: samples that share stage shapes may share one plan dict, so the sample's own
        # measured demands take precedence over the ones stored in the plan.
        demands = plan.get("demands") if isinstance(plan.get("demands"), Mapping) else {}
        plan = dict(plan["plan"], **{k: v for k, v in demands.items() if v is not None})
    missing = [key for key in ("token_shapes", "executed_model_calls") if key not in plan]
    if missing:
        raise ValueError(f"plan dict is missing {missing}; allowed: a dict from Plan.to_dict() "
                         f"(keys include token_shapes, executed_model_calls)")
    shapes, calls = plan["token_shapes"], plan["executed_model_calls"]
    if len(shapes) != 4 or len(calls) != 4:
        raise ValueError(f"plan has {len(shapes)} token shapes and {len(calls)} call counts; allowed: 4 of each")
    if any(int(c) < 0 for c in calls):
        raise ValueError(f"executed_model_calls={list(calls)} is invalid; allowed: non-negative counts")
    return dict(plan)


def tokens_per_step(plan: Any) -> List[tuple]:
    """[(step, stage, latent tokens)] for every executed model call of the plan, in order.
    Executed calls are contiguous per stage (the transition step still runs at the old size)."""
    plan = plan_as_dict(plan)
    out, step = [], 0
    for stage, (shape, calls) in enumerate(zip(plan["token_shapes"], plan["executed_model_calls"])):
        tokens = int(shape[0]) * int(shape[1]) * int(shape[2])
        for _ in range(int(calls)):
            out.append((step, stage, tokens))
            step += 1
    return out


def _full_tokens(plan: dict) -> int:
    grid = plan.get("grid") or {}
    if "latent_shape" in grid and "patch" in grid:
        return int(__import__("math").prod(n // p for n, p in zip(grid["latent_shape"], grid["patch"])))
    t, h, w = plan["token_shapes"][-1]
    return int(t) * int(h) * int(w)


def _split_text(plan: dict) -> str:
    s2, t23 = plan.get("s2"), plan.get("t23")
    full_t = (plan.get("grid") or {}).get("latent_shape", plan["token_shapes"][-1])[0]
    if s2 is None or t23 is None:
        return "initial plan (not yet planned)"
    text = f"chosen split: space s2={float(s2):.1f}, time t23={int(t23)}/{int(full_t)} frames"
    if plan.get("spatial_demand") is not None and plan.get("temporal_demand") is not None:
        text += f"  (demands S={plan['spatial_demand']:.3f}, M={plan['temporal_demand']:.3f})"
    return text


def plot_plan(plans: Union[Any, Sequence[Any]], path: Union[str, os.PathLike], *,
              labels: Optional[Sequence[str]] = None, title: Optional[str] = None) -> str:
    """Draw tokens per step by stage, one panel per sample, and save to `path` (.png, .svg or .pdf).

    plans: one plan or a list of them (planner `Plan`s or `Plan.to_dict()` dicts, one per sample).
    labels: optional panel titles (e.g. the prompts). Returns str(path).
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if isinstance(plans, Mapping) or hasattr(plans, "to_dict"):
        plans = [plans]
    plans = [plan_as_dict(p) for p in plans]
    if not plans:
        raise ValueError("plans=[] is invalid; allowed: at least one plan")
    if labels is not None and len(labels) != len(plans):
        raise ValueError(f"labels has {len(labels)} entries for {len(plans)} plans; allowed: one per plan")
    path = pathlib.Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ValueError(f"path={str(path)!r} has an unsupported suffix; allowed: .png, .svg, .pdf")

    fig, axes = plt.subplots(len(plans), 1, figsize=(8.0, 1.0 + 2.8 * len(plans)), squeeze=False)
    for index, (plan, ax) in enumerate(zip(plans, axes[:, 0])):
        steps = tokens_per_step(plan)
        full = _full_tokens(plan)
        xs = [s for s, _, _ in steps]
        for stage in range(4):
            stage_steps = [(s, n) for s, k, n in steps if k == stage]
            if not stage_steps:
                continue
            ax.bar([s for s, _ in stage_steps], [n for _, n in stage_steps], width=1.0, align="edge",
                   color=STAGE_COLOURS[stage], edgecolor="white", linewidth=0.4)
            shape = plan["token_shapes"][stage]
            first = stage_steps[0][0]
            ax.text(first + 0.15, stage_steps[0][1], f"{shape[0]}×{shape[1]}×{shape[2]}", fontsize=7,
                    va="bottom", ha="left")
        ax.axhline(full, color="black", linestyle="--", linewidth=1.0)
        ax.fill_between([0, len(xs)], [full, full], [0, 0], color="grey", alpha=0.08, zorder=0)
        used = sum(n for _, _, n in steps)
        ratio = used / (full * max(len(xs), 1))
        name = labels[index] if labels is not None else f"sample {index}"
        ax.set_title(f"{name}: {used:,} token-steps = {ratio:.1%} of full", fontsize=9)
        ax.text(0.01, 0.97, _split_text(plan), transform=ax.transAxes, fontsize=8, va="top",
                bbox=dict(boxstyle="round", facecolor="white", alpha=0.85, linewidth=0.5))
        ax.set_xlim(0, max(len(xs), 1))
        ax.set_ylim(0, full * 1.32)
        ax.set_ylabel("tokens per step")
        ax.xaxis.get_major_locator().set_params(integer=True)
        for t in plan.get("transition_steps", []):
            ax.axvline(t + 1, color="black", linewidth=0.5, alpha=0.4)
    axes[-1, 0].set_xlabel("denoising step (model call)")
    handles = [Patch(color=STAGE_COLOURS[k], label=f"stage {k}") for k in range(4)]
    handles.append(Patch(facecolor="white", edgecolor="black", linestyle="--", label="full size (baseline)"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1.0 - 0.35 / fig.get_figheight()), ncol=5,
               fontsize=8, frameon=False)
    fig.suptitle(title or "DVG: tokens per step", y=0.995, fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1.0 - 0.62 / fig.get_figheight()))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
    return str(path)
