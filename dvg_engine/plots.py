"""Plots of DVG plans (matplotlib, Agg backend: no display needed).

`plot_plan(plans, path)` draws, for each sample, the latent tokens the transformer processes at every
executed denoising step, coloured by stage, against the full-size baseline; the chosen space/time
split (stage-1 spatial rate s2 and stage-1/2 frame count t23) is written on each panel, and the
area saved is shaded. Used by `dvg demo` (plan.png), `dvg generate --plot` and `dvg plan --plot`.

Benchmark charts (`dvg bench --plot DIR`): `plot_e2e`, `plot_pack_ln`, `plot_resample`, `plot_attention`
each take a benchmark module's rows (list of dicts, as its run() returns them) and a path, and raise
`NothingToPlot` with a one-line reason when the rows lack what the chart needs; `plot_benchmark(name,
result, path)` picks the chart for module `name`.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, List, Mapping, Optional, Sequence, Union

__all__ = ["plan_as_dict", "tokens_per_step", "plot_plan", "STAGE_COLOURS", "NothingToPlot", "plot_e2e", "plot_pack_ln",
           "plot_resample", "plot_attention", "BENCH_CHARTS", "rows_of", "plot_benchmark"]

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


# ---------------------------------------------------------------------------------------------------
# benchmark charts (`dvg bench --plot DIR`)
# ---------------------------------------------------------------------------------------------------

class NothingToPlot(ValueError):
    """The rows hold nothing this chart can draw (missing keys, no numbers); the message is a one-line note."""


_OURS = "#C44E52"
_OTHERS = ("#8C8C8C", "#A6A6A6", "#6E6E6E", "#BDBDBD", "#7F7F7F", "#CFCFCF", "#5E5E5E", "#B0B0B0")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _number(value: Any) -> Optional[float]:
    """value as a finite float; None for None, "", NaN, non-numbers and bools (a table cell that says nothing)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out and out not in (float("inf"), float("-inf")) else None


def _check_rows(rows: Any, chart: str) -> List[Mapping]:
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, Mapping) for r in rows):
        raise NothingToPlot(f"{chart}: rows are {type(rows).__name__}, not a list of dicts")
    if not rows:
        raise NothingToPlot(f"{chart}: no rows")
    return list(rows)


def _chart_path(path: Union[str, os.PathLike]) -> pathlib.Path:
    path = pathlib.Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ValueError(f"path={str(path)!r} has an unsupported suffix; allowed: .png, .svg, .pdf")
    return path


def _save(fig, path: pathlib.Path) -> str:
    plt = _pyplot()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(str(path), dpi=100)
    finally:
        plt.close(fig)
    return str(path)


def _shape_text(shape: Any) -> str:
    try:
        return "×".join(str(int(n)) for n in shape)
    except (TypeError, ValueError):
        return str(shape)


def _best_of(times: Any) -> Optional[float]:
    """The smallest number in a list of repeat times (or the one number); None when there is none."""
    values = [_number(t) for t in (times if isinstance(times, (list, tuple)) else [times])]
    values = [t for t in values if t is not None]
    return min(values) if values else None


def _e2e_runs(rows: Sequence[Mapping]) -> List[dict]:
    """bench_e2e rows in one form: [{label, shapes, calls, stage_s, measured, ideal, baseline_s, dvg_s}].
    CPU rows carry a whole run each (lists per stage, best-of wall times as lists); GPU rows are one per stage
    forward ("what": "forward stageK", s_per_step) plus a "50-step loop" summary."""
    runs = []
    for row in rows:
        if not all(k in row for k in ("stage_shapes", "calls", "forward_stage_s")):
            continue
        shapes, calls, stage_s = row["stage_shapes"], row["calls"], row["forward_stage_s"]
        if not (isinstance(shapes, (list, tuple)) and isinstance(calls, (list, tuple))
                and isinstance(stage_s, (list, tuple)) and len(shapes) == len(calls) == len(stage_s) > 0):
            continue
        base, dvg = _best_of(row.get("baseline_s")), _best_of(row.get("dvg_s"))
        label = " ".join(str(row[k]) for k in ("device", "geometry") if row.get(k) is not None) or f"run {len(runs)}"
        runs.append({"label": label, "shapes": list(shapes), "calls": [_number(c) for c in calls],
                     "stage_s": [_number(t) for t in stage_s], "measured": _number(row.get("measured_speedup")),
                     "ideal": _number(row.get("ideal_speedup")), "baseline_s": base, "dvg_s": dvg})
    stages = [r for r in rows if str(r.get("what", "")).startswith("forward stage") and "fused" not in str(r["what"])]
    loop = next((r for r in rows if r.get("what") == "50-step loop"), None)
    if stages:
        stages.sort(key=lambda r: str(r["what"]))
        label = str(loop.get("gpu")) if loop is not None and loop.get("gpu") else "GPU"
        runs.append({"label": label, "shapes": [r.get("shape") for r in stages],
                     "calls": [_number(r.get("calls")) for r in stages],
                     "stage_s": [_number(r.get("s_per_step")) for r in stages],
                     "measured": None if loop is None else _number(loop.get("implied_speedup_vs_baseline")),
                     "ideal": None if loop is None else _number(loop.get("ideal_speedup")),
                     "baseline_s": None if loop is None else _number(loop.get("baseline_loop_s")),
                     "dvg_s": None if loop is None else _number(loop.get("dvg_loop_s")),
                     "measured_name": "implied"})
    return [r for r in runs if any(t is not None for t in r["stage_s"]) or r["measured"] is not None]


def plot_e2e(rows: Sequence[Mapping], path: Union[str, os.PathLike]) -> str:
    """bench_e2e rows -> one row of two panels per run: left, the measured vs the ideal speedup of DVG over
    the baseline; right, where the DVG loop's time goes: per stage, forward seconds × calls, stacked (the
    legend names each stage's token shape t×h×w, calls and seconds), next to the measured DVG and baseline
    loop times. Accepts the CPU rows (one dict per run, per-stage lists) and the GPU rows (one per stage
    forward plus the "50-step loop" row). Raises NothingToPlot when no row has the keys. Returns str(path)."""
    rows = _check_rows(rows, "bench_e2e")
    path = _chart_path(path)
    runs = _e2e_runs(rows)
    if not runs:
        raise NothingToPlot("bench_e2e: no row has stage_shapes/calls/forward_stage_s (CPU) or "
                            "'forward stageK' + s_per_step rows (GPU)")
    plt = _pyplot()
    from matplotlib.patches import Patch
    fig, axes = plt.subplots(len(runs), 2, figsize=(14.0, 0.6 + 2.6 * len(runs)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2.6]})
    for run, (left, right) in zip(runs, axes):
        wall = "measured wall" if run.get("measured_name") is None else "sum of timed forwards"
        speedups = [(name, run[key], colour) for key, name, colour in
                    (("measured", "measured" if run.get("measured_name") is None else "implied", _OURS),
                     ("ideal", "ideal", "#4C72B0"))]
        bars = left.bar([s[0] for s in speedups], [s[1] or 0.0 for s in speedups], color=[s[2] for s in speedups],
                        width=0.6)
        for bar, (_, value, _) in zip(bars, speedups):
            left.text(bar.get_x() + bar.get_width() / 2, value or 0.0, "n/a" if value is None else f"{value:.2f}×",
                      ha="center", va="bottom", fontsize=8)
        left.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
        left.set_ylim(0, max([s[1] or 0.0 for s in speedups] + [1.0]) * 1.22)
        left.set_ylabel("speedup over baseline (×)", fontsize=8)
        left.set_title(f"{run['label']}: DVG speedup", fontsize=9)

        labels, handles, start = [], [], 0.0
        for stage, (shape, calls, seconds) in enumerate(zip(run["shapes"], run["calls"], run["stage_s"])):
            colour = STAGE_COLOURS[stage % len(STAGE_COLOURS)]
            if seconds is None or calls is None:
                handles.append(Patch(facecolor="white", edgecolor=colour,
                                     label=f"stage {stage} {_shape_text(shape)}: not timed"))
                continue
            width = seconds * calls
            right.barh(0, width, left=start, height=0.6, color=colour, edgecolor="white", linewidth=0.5)
            handles.append(Patch(color=colour, label=f"stage {stage} {_shape_text(shape)}: {calls:g} calls × "
                                                     f"{seconds:.3g} s = {width:.3g} s"))
            start += width
        labels.append("DVG: stage\nforwards × calls")
        right.text(start, 0, f" {start:.3g} s", va="center", fontsize=8)
        longest = start
        for kind, value, colour in (("DVG loop", run["dvg_s"], _OURS), ("baseline", run["baseline_s"], "#8C8C8C")):
            if value is None:
                continue
            right.barh(len(labels), value, height=0.6, color=colour)
            right.text(value, len(labels), f" {value:.3g} s", va="center", fontsize=8)
            labels.append(f"{kind}\n({wall})")
            longest = max(longest, value)
        right.set_yticks(range(len(labels)), labels, fontsize=7.5)
        right.invert_yaxis()
        right.set_xlim(0, longest * 1.12 if longest > 0 else 1.0)
        right.set_xlabel("seconds", fontsize=8)
        right.set_title("where the DVG loop's time goes", fontsize=9)
        right.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                     title="stage token shape t×h×w", title_fontsize=7)
    fig.suptitle("bench_e2e", fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return _save(fig, path)


def _pct_of_copy(row: Mapping) -> Optional[float]:
    for key in ("% of copy_", "% of copy bandwidth"):
        if key in row:
            return _number(row[key])
    return None


def _pack_series(row: Mapping) -> str:
    return " ".join(str(row[k]) for k in ("backend", "variant") if row.get(k)) or "ours"


def plot_pack_ln(rows: Sequence[Mapping], path: Union[str, os.PathLike]) -> str:
    """bench_pack_ln rows -> bars of % of copy bandwidth (`copy_` into an existing buffer) per op, one bar per
    backend/variant (allocating vs out=; ours coloured, the torch reference grey), with the 70 % (CPU) and
    80 % (GPU) target lines. Allocating bars also name their % of `clone` (the fair ceiling for a fresh
    buffer). The copy ceiling rows are not drawn. Raises NothingToPlot when no row has op and a % of copy.
    Returns str(path)."""
    rows = _check_rows(rows, "bench_pack_ln")
    path = _chart_path(path)
    usable = [r for r in rows if "op" in r and _pct_of_copy(r) is not None and "ceiling" not in str(r["op"])]
    if not usable:
        raise NothingToPlot("bench_pack_ln: no row has 'op' and '% of copy_' (or '% of copy bandwidth')")
    ops = list(dict.fromkeys(str(r["op"]) for r in usable))
    series = list(dict.fromkeys(_pack_series(r) for r in usable))
    plt = _pyplot()
    import numpy as np
    fig, ax = plt.subplots(figsize=(max(7.0, 1.9 * len(ops) + 2.5), 4.6))
    width = 0.8 / len(series)
    x = np.arange(len(ops))
    ours_shades = ("#C44E52", "#DD8452", "#8172B2", "#937860")
    top = 100.0
    for index, name in enumerate(series):
        values, notes = [], []
        for op in ops:
            match = next((r for r in usable if str(r["op"]) == op and _pack_series(r) == name), None)
            values.append(None if match is None else _pct_of_copy(match))
            clone = None if match is None else _number(match.get("% of clone"))
            met = None if match is None else match.get("met")
            # the row's own verdict on its target (which may be a × torch ref one, not the % lines drawn)
            mark = {"yes": " ✓", "no": " ✗"}.get(str(met).strip().lower(), "")
            notes.append(mark + ("" if clone is None else f"\n({clone:.0f}% of clone)"))
        reference = name.startswith("torch")
        colour = "#A6A6A6" if reference else ours_shades[index % len(ours_shades)]
        hatch = "//" if "alloc" in name else None
        xs = [xi + (index - (len(series) - 1) / 2) * width for xi, v in zip(x, values) if v is not None]
        vs = [v for v in values if v is not None]
        ns = [n for v, n in zip(values, notes) if v is not None]
        bars = ax.bar(xs, vs, width=width * 0.95, color=colour, hatch=hatch, edgecolor="white", label=name)
        for bar, v, note in zip(bars, vs, ns):
            ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.0f}%{note}", ha="center", va="bottom", fontsize=6.5)
        top = max([top] + vs)
    for level, colour, name in ((70, "#55A868", "CPU target 70 %"), (80, "#4C72B0", "GPU target 80 %")):
        ax.axhline(level, color=colour, linestyle="--", linewidth=1.0, label=name)
    shapes = {op: next((str(r["shape"]) for r in usable if str(r["op"]) == op and r.get("shape")), "") for op in ops}
    ax.set_xticks(x, [f"{op}\n{shapes[op]}".strip() for op in ops], fontsize=8)
    ax.set_ylabel("% of copy_ bandwidth (existing buffer)")
    ax.set_ylim(0, top * 1.2)
    dtype = next((str(r["dtype"]) for r in usable if r.get("dtype")), "")
    ax.set_title(f"bench_pack_ln: bandwidth as % of a plain copy_{f' ({dtype})' if dtype else ''}\nhatched: "
                 f"allocating (fresh output), solid: out= (caller's buffer); ✓/✗: the row's target met/missed",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncol=min(len(series) + 2, 3))
    fig.tight_layout()
    return _save(fig, path)


def plot_resample(rows: Sequence[Mapping], path: Union[str, os.PathLike]) -> str:
    """bench_resample rows -> bars of the fused resample+renoise op's speedup over the torch reference, one
    group per transition (one bar per out_dtype on GPU), with a 1× line. Raises NothingToPlot when no row
    has transition and speedup_vs_torch. Returns str(path)."""
    rows = _check_rows(rows, "bench_resample")
    path = _chart_path(path)
    usable = [r for r in rows if "transition" in r and _number(r.get("speedup_vs_torch")) is not None]
    if not usable:
        raise NothingToPlot("bench_resample: no row has 'transition' and a numeric 'speedup_vs_torch'")
    transitions = list(dict.fromkeys(str(r["transition"]) for r in usable))
    dtypes = list(dict.fromkeys(str(r.get("out_dtype", "")).replace("torch.", "") for r in usable))
    ours = "Triton" if any("triton_us" in r for r in usable) else ("C++" if any("cpp_ms" in r for r in usable)
                                                                    else "fused op")
    plt = _pyplot()
    import numpy as np
    fig, ax = plt.subplots(figsize=(max(6.5, 2.4 * len(transitions) + 1.5), 4.2))
    width = 0.8 / len(dtypes)
    x = np.arange(len(transitions))
    top = 1.0
    for index, dtype in enumerate(dtypes):
        pairs = [(i, _number(r["speedup_vs_torch"])) for i, t in enumerate(transitions) for r in usable
                 if str(r["transition"]) == t and str(r.get("out_dtype", "")).replace("torch.", "") == dtype]
        xs = [x[i] + (index - (len(dtypes) - 1) / 2) * width for i, _ in pairs]
        vs = [v for _, v in pairs]
        bars = ax.bar(xs, vs, width=width * 0.95, color=(_OURS, "#DD8452", "#8172B2")[index % 3],
                      label=f"{ours} {dtype}".strip())
        for bar, v in zip(bars, vs):
            ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.1f}×", ha="center", va="bottom", fontsize=7.5)
        top = max([top] + vs)
    ax.axhline(1.0, color="black", linestyle=":", linewidth=0.8)
    ax.set_xticks(x, [t.replace(" ", "\n", 1) for t in transitions], fontsize=7.5)
    ax.set_ylabel("speedup vs torch reference (×)")
    ax.set_ylim(0, top * 1.18)
    device = next((str(r["device"]) for r in usable if r.get("device")), "")
    ax.set_title(f"bench_resample: fused resample + re-noise ({ours}) vs the torch reference"
                 f"{f'{chr(10)}on {device}' if device else ''}", fontsize=9)
    if len(dtypes) > 1 or dtypes[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_attention(rows: Sequence[Mapping], path: Union[str, os.PathLike]) -> str:
    """bench_attention rows -> TFLOP/s per provider, one panel row per case, our kernel (provider
    "dvg_triton") highlighted and the others grey; providers that did not run are listed, not drawn.
    Raises NothingToPlot when no row has case, provider and a numeric tflops. Returns str(path)."""
    rows = _check_rows(rows, "bench_attention")
    path = _chart_path(path)
    usable = [r for r in rows if "case" in r and "provider" in r and _number(r.get("tflops")) is not None]
    if not usable:
        raise NothingToPlot("bench_attention: no row has 'case', 'provider' and a numeric 'tflops'")
    cases = list(dict.fromkeys(str(r["case"]) for r in usable))
    plt = _pyplot()
    providers = list(dict.fromkeys(str(r["provider"]) for r in usable))
    fig, axes = plt.subplots(len(cases), 1, figsize=(8.5, 0.8 + (0.28 * len(providers) + 0.6) * len(cases)),
                             squeeze=False, sharex=True)
    top = max(_number(r["tflops"]) for r in usable)
    for case, ax in zip(cases, axes[:, 0]):
        mine = [r for r in usable if str(r["case"]) == case]
        names = [str(r["provider"]) for r in mine]
        values = [_number(r["tflops"]) for r in mine]
        colours = [_OURS if n == "dvg_triton" else _OTHERS[providers.index(n) % len(_OTHERS)] for n in names]
        bars = ax.barh(range(len(mine)), values, color=colours, height=0.75)
        for bar, name, value in zip(bars, names, values):
            ratio = next((_number(r.get("vs_best_sdpa")) for r in mine if str(r["provider"]) == name), None)
            ax.text(value, bar.get_y() + bar.get_height() / 2,
                    f" {value:.0f}" + (f"  ({ratio:.2f}× the best SDPA)" if ratio is not None else ""),
                    va="center", fontsize=7, fontweight="bold" if name == "dvg_triton" else "normal")
        ax.set_yticks(range(len(mine)), names, fontsize=7)
        for tick, name in zip(ax.get_yticklabels(), names):
            if name == "dvg_triton":
                tick.set_fontweight("bold")
                tick.set_color(_OURS)
        ax.invert_yaxis()
        missing = [str(r["provider"]) for r in rows if str(r.get("case")) == case and r not in mine and "provider" in r]
        ax.set_title(case + (f"   (did not run: {', '.join(missing)})" if missing else ""), fontsize=8, loc="left")
        ax.set_xlim(0, top * 1.4)
    axes[-1, 0].set_xlabel("TFLOP/s")
    gpu = next((str(r["gpu"]) for r in rows if r.get("gpu")), "")
    fig.suptitle(f"bench_attention: varlen attention throughput{f' on {gpu}' if gpu else ''} (ours: dvg_triton)",
                 fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return _save(fig, path)


BENCH_CHARTS = {"bench_e2e": plot_e2e, "bench_pack_ln": plot_pack_ln, "bench_resample": plot_resample,
                "bench_attention": plot_attention}


def rows_of(result: Any) -> Optional[List[Mapping]]:
    """The table rows in what a benchmark's run() returned (a list of dicts, or a dict's "rows"); None if none."""
    if isinstance(result, Mapping):
        result = result.get("rows")
    if isinstance(result, (list, tuple)) and result and all(isinstance(r, Mapping) for r in result):
        return list(result)
    return None


def plot_benchmark(name: str, result: Any, path: Union[str, os.PathLike]) -> str:
    """Chart of benchmark module `name`'s run() result (see BENCH_CHARTS) at `path`. Raises NothingToPlot
    (one-line reason) when the module has no chart or the result holds no rows the chart can use."""
    chart = BENCH_CHARTS.get(name)
    if chart is None:
        raise NothingToPlot(f"{name}: no chart for this module (charts exist for {', '.join(sorted(BENCH_CHARTS))})")
    rows = rows_of(result)
    if rows is None:
        raise NothingToPlot(f"{name}: run() returned no table rows")
    return chart(rows, path)
