"""`compile_pipeline`: DVG sampling for the diffusers HunyuanVideo / HunyuanVideo-1.5 pipelines.

    pipe = compile_pipeline(pipe, budget=0.5)   # the same object; pipe(...) now runs DVG
    pipe.dvg.last_report                         # what DVG did (JSON; schema `REPORT_SCHEMA_VERSION`)
    pipe.dvg.restore()                           # exact undo

How it attaches (no global monkey-patching):

* the pipeline instance's class is swapped for a per-class subclass whose `__call__` has the original's
  signature (``functools.wraps``) and runs the engine's denoising loop; `restore()` puts the original
  class back on the instance. The subclass keeps the class name, so `save_pretrained` is unchanged;
* the transformer's joint-attention processors are wrapped per instance with
  `transformer.set_attn_processor` (`dvg_engine.processors`); the token refiner keeps its own. Outside
  a DVG call the wrappers call the originals, so a transformer shared via `from_pipe` is unaffected;
  `restore()` puts the very same original processor objects back;
* during a call only: the transformer's RoPE module is wrapped by a per-shape cache, and with
  `compile_blocks` (True or torch.compile keyword arguments) its blocks run through `torch.compile` (one graph
  per stage shape and block class), and so do the per-block computations of the per-sample packed forward (one
  graph set per set of stage shapes). The graphs are dynamic in the prompts' valid text lengths only, so prompts
  of new lengths reuse them.

The denoising loop (dvg-spec.md §12): prompts are encoded and stage-0 noise drawn with the pipeline's
own methods (the noise at the stage-0 shape, from the user's generator); each step runs the model on the
current stage's latents; at a transition step x̂0 is formed, at the first transition the demands are
read (the one device→host value read of the loop) and each sample (plan_scope="sample") or the batch
("batch") is planned, the schedule is re-shifted (`sampling.StageSchedule`), and x̂0 is resampled to
the next stage and re-noised in one fused op (`torch.ops.dvg.resample_renoise`). Diffusers' cache hooks
are reset at every transition (their residuals belong to the previous grid).

Attention always runs through the packed varlen path (`torch.ops.dvg.varlen_attention`), skipping text
padding and masked tokens. Samples whose plans coincide share one batched transformer forward. Samples
whose stage shapes differ run, per condition, in *one* packed forward for the whole batch
(`processors.PackedHunyuanVideoForward` / `PackedHunyuanVideo15Forward`: per-sample AdaLN modulation per
segment through `torch.ops.dvg.modulated_layer_norm` — two segments per sample under HunyuanVideo I2V's
token_replace, frame 0 and the rest —, one varlen attention call per layer; a LoRA `scale` in
`attention_kwargs` is applied around it as the transformer's own forward does) — except with diffusers'
cache hooks or accelerate's offload hooks, which wrap the modules' own forward methods: there each plan group
runs the transformer's own forward instead.

`callback_on_step_end` (HunyuanVideo pipelines) receives `latents` at the *current stage's* shape, so
its shape changes at the transition steps; when the samples of a batch follow different plans it
receives a list of per-sample tensors ``(1, C, T_b, H_b, W_b)`` instead of one tensor. A callback may
return replacement latents of the same shape(s).

Host reads per generation: the text-mask lengths once at prompt encoding (to validate the prefix masks
and size the packed attention), the demands once at planning, and a device sync at each stage boundary
for the per-stage timings. The steps themselves read nothing back (the HunyuanVideo-1.5 transformer's
own forward does a few reads of its own: its T2V/I2V switch and the boolean-mask gathers of its text
reordering; the packed forward avoids them).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from . import _checks, adapters, processors
from .config import DVGConfig
from .ops import _registry

REPORT_SCHEMA_VERSION = 1

# The engine relies on diffusers internals (processor call conventions, pipeline method names, the
# transformers' forward layout), checked against these releases.
SUPPORTED_DIFFUSERS = ((0, 35), (0, 43))  # [min, max) as (major, minor)


def _check_diffusers_version() -> str:
    import diffusers
    version = diffusers.__version__
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:  # e.g. a dev build with an odd tag: let it through, the calls will tell
        return version
    low, high = SUPPORTED_DIFFUSERS
    if not low <= (major, minor) < high:
        raise ImportError(f"dvg_engine.engine supports diffusers >={low[0]}.{low[1]},<{high[0]}.{high[1]} (it relies "
                          f"on the HunyuanVideo pipelines' and transformers' internals); found diffusers {version}. "
                          f"Install a supported release, e.g. pip install 'diffusers>={low[0]}.{low[1]},<{high[0]}.{high[1]}'")
    return version


DIFFUSERS_VERSION = _check_diffusers_version()


# ---------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------

class DVGHandle:
    """`pipe.dvg`: the configuration, the last generation's report, and `restore()`."""

    def __init__(self, pipe, config: DVGConfig, original_class: type) -> None:
        self._pipe = pipe
        self.config = config
        self.original_class = original_class
        self.last_report: Optional[Dict[str, Any]] = None
        self.active = True
        self._transformers: List[Any] = []

    def restore(self):
        """Undo `compile_pipeline`: the original class and the very same original attention processors come
        back, so the pipeline behaves bit-identically to one that was never compiled. Returns the pipeline."""
        pipe = self._pipe
        if not self.active:
            return pipe
        for transformer in self._transformers:
            processors.uninstall(transformer)
        self._transformers.clear()
        pipe.__class__ = self.original_class
        self.active = False
        if pipe.__dict__.get("dvg") is self:
            del pipe.__dict__["dvg"]
        return pipe

    def __repr__(self) -> str:
        return f"DVGHandle(active={self.active}, config={self.config!r})"


def compile_pipeline(pipe, config: Optional[DVGConfig] = None, **overrides):
    """Make `pipe` run DVG; returns the same object (see the module docstring).

    pipe: a HunyuanVideoPipeline, HunyuanVideoImageToVideoPipeline, HunyuanVideo15Pipeline or
    HunyuanVideo15ImageToVideoPipeline. config: a `DVGConfig` (default: the faithful defaults);
    overrides: `DVGConfig` fields (e.g. budget=0.5, plan_scope="batch"), applied on top of `config`.
    Calling it again on a compiled pipeline replaces the configuration (no stacking).
    """
    adapter = adapters.adapter_for(pipe)  # raises for unsupported classes, naming the supported ones
    if config is None:
        existing = pipe.__dict__.get("dvg")
        config = existing.config if isinstance(existing, DVGHandle) and existing.active else DVGConfig()
    elif not isinstance(config, DVGConfig):
        _checks.fail("config", config, "a dvg_engine.DVGConfig or None", TypeError)
    config = config.replace(**overrides) if overrides else config.replace()
    handle = pipe.__dict__.get("dvg")
    if isinstance(handle, DVGHandle) and handle.active:
        handle.config = config
        return pipe
    original = adapters.original_class(pipe)
    handle = DVGHandle(pipe, config, original)
    processors.install(pipe.transformer, adapter.model)
    handle._transformers.append(pipe.transformer)
    pipe.__class__ = _dvg_subclass(original)
    pipe.__dict__["dvg"] = handle
    return pipe


_SUBCLASSES: Dict[type, type] = {}


def _dvg_subclass(cls: type) -> type:
    """A subclass of the pipeline class whose `__call__` runs DVG (same signature and docs)."""
    if cls in _SUBCLASSES:
        return _SUBCLASSES[cls]
    original_call = cls.__call__

    @functools.wraps(original_call)
    def __call__(self, *args, **kwargs):
        return _Generation(self, original_call, args, kwargs).run()

    sub = type(cls.__name__, (cls,), {"__call__": __call__, "_dvg_original_class": cls,
                                       "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                       "__doc__": cls.__doc__})
    _SUBCLASSES[cls] = sub
    return sub


def _has_forward_hooks(transformer) -> bool:
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.hooks:
            return True
        if getattr(module, "_hf_hook", None) is not None:
            return True
    return False


@contextlib.contextmanager
def _lora_scale(transformer, attention_kwargs: Optional[Dict[str, Any]]):
    """What the transformers' own forward does with `attention_kwargs` (diffusers' `apply_lora_scale`), for the
    packed forward that bypasses it: its "scale" scales the PEFT LoRA layers for the call. The HunyuanVideo and
    HunyuanVideo-1.5 forwards use nothing else from it (they pass no attention kwargs to their processors)."""
    from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers
    scale = (attention_kwargs or {}).get("scale", 1.0)
    if not USE_PEFT_BACKEND:
        yield
        return
    scale_lora_layers(transformer, scale)
    try:
        yield
    finally:
        unscale_lora_layers(transformer, scale)


class _RopeCache(torch.nn.Module):
    """Wraps the transformer's RoPE module for the duration of a DVG call: its tables depend only on the
    latent grid, so each stage shape is computed once instead of at every step."""

    def __init__(self, rope: torch.nn.Module) -> None:
        super().__init__()
        self.inner = rope
        self.tables: Dict[Any, Any] = {}

    def forward(self, hidden_states: torch.Tensor):
        key = (tuple(hidden_states.shape[2:]), hidden_states.device)
        if key not in self.tables:
            self.tables[key] = self.inner(hidden_states)
        return self.tables[key]


class _cached_rope:
    def __init__(self, transformer) -> None:
        self.transformer = transformer
        self.original = getattr(transformer, "rope", None)

    def __enter__(self):
        if isinstance(self.original, torch.nn.Module) and not isinstance(self.original, _RopeCache):
            self.transformer.rope = _RopeCache(self.original)
        return self

    def __exit__(self, *exc):
        if self.original is not None:
            self.transformer.rope = self.original
        return False


class _compiled_blocks:
    """With `compile_blocks` set (True, or a dict of torch.compile keyword arguments), the transformer blocks run
    through `torch.compile` during the DVG call only.

    dynamic=False: each stage shape compiles once per block class (Dynamo inlines the blocks' modules, so
    instances of one class share a graph; four shapes per plan; Dynamo's cache keeps them across calls), and
    nothing recompiles per step because the step loop reuses the same layout tensors and host ints per shape.
    The one dimension left dynamic is the packed attention's token count, which follows the prompts' valid text
    lengths (the blocks see the text padded to the pipeline's fixed length): `processors.PackedAttention.
    for_compile` marks it and replaces the exact max_seqlen (a host int, hence a graph constant) by a bound fixed
    per stage shape, so prompts of new lengths compile nothing (`fused_rope` too: the pack
    ops take the symbolic token count). A new *padded* length (another max_sequence_length, or prompt embeddings
    of another length) does compile anew.
    Outside the call the blocks are the plain modules again, so a shared transformer is unaffected and
    `restore()` has nothing extra to undo. The per-sample packed forward (samples of one batch on different
    plans) calls the blocks' sub-modules itself, bypassing their compiled forward: it compiles its own per-block
    computations with `kwargs` (`processors.PackedHunyuanVideoForward`; one graph set per set of stage shapes,
    dynamic in the text stream's length, dynamic=False otherwise and the same recompile limit; they live only
    as long as the DVG call)."""

    # Graphs Dynamo keeps per code object before it gives up and runs that code eagerly (torch's default is 8).
    # Each stage shape costs up to 3 graphs per block code object (HunyuanVideo's single-stream blocks compile
    # twice: the first one gets the dual stream's contiguous output, the others a strided slice), so the
    # default would be spent by one plan's four shapes and every later plan's new stage shapes would run
    # eagerly; 64 leaves room for about a dozen plans (prompts of new text lengths cost none: see above). Past the
    # limit, Dynamo runs that code eagerly (with fullgraph=True it raises instead).
    RECOMPILE_LIMIT = 64

    def __init__(self, transformer, setting) -> None:
        self.blocks = []
        self.enabled = setting is not False
        self.kwargs = {} if setting is True else dict(setting or {})
        if self.enabled:
            for name in ("transformer_blocks", "single_transformer_blocks"):
                self.blocks.extend(getattr(transformer, name, None) or [])
            supported = "recompile_limit" in inspect.signature(torch.compile).parameters
            if "recompile_limit" in self.kwargs and not supported:
                raise ValueError(f"compile_blocks={setting!r}: torch {torch.__version__}'s torch.compile has no "
                                 f"recompile_limit argument; allowed: leave it out (or set "
                                 f"torch._dynamo.config.recompile_limit / cache_size_limit yourself)")
            if supported:
                self.kwargs.setdefault("recompile_limit", self.RECOMPILE_LIMIT)

    def __enter__(self):
        for block in self.blocks:
            block.compile(dynamic=False, **self.kwargs)
        return self

    def __exit__(self, *exc):
        for block in self.blocks:
            # nn.Module.compile() stores the compiled callable here; clearing it restores the eager module
            block.__dict__.pop("_compiled_call_impl", None)
        return False


# ---------------------------------------------------------------------------------------------------
# One generation
# ---------------------------------------------------------------------------------------------------

class _Group:
    """Samples that follow the same plan (and so share stage shapes): their latents are one tensor."""

    def __init__(self, indices: List[int], plan, latents: torch.Tensor) -> None:
        self.indices = indices
        self.plan = plan
        self.latents = latents


class _FullSchedule:
    """enabled=False: the pipeline's own scheduler, exactly as the diffusers loop drives it."""

    def __init__(self, pipe, num_steps: int, device, sigmas) -> None:
        import numpy as np
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import retrieve_timesteps
        self.scheduler = pipe.scheduler
        sigmas = np.linspace(1.0, 0.0, num_steps + 1)[:-1] if sigmas is None else sigmas
        self.timesteps, self.num_steps = retrieve_timesteps(self.scheduler, num_steps, device, sigmas=sigmas)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        self.stage = 0

    def model_timestep(self, i: int) -> torch.Tensor:
        return self.timesteps[i]

    def is_transition(self, i: int) -> bool:
        return False

    def euler_step(self, x, v, i):
        return self.scheduler.step(v, self.timesteps[i], x, return_dict=False)[0]


class _Generation:
    def __init__(self, pipe, original_call, args, kwargs) -> None:
        self.pipe = pipe
        self.handle: DVGHandle = pipe.__dict__["dvg"]
        self.config: DVGConfig = self.handle.config
        self.adapter = adapters.adapter_for(pipe)
        bound = inspect.signature(original_call).bind(pipe, *args, **kwargs)
        bound.apply_defaults()
        self.args = dict(bound.arguments)
        self.args.pop(next(iter(inspect.signature(original_call).parameters)))  # self
        self.layouts: Dict[Any, processors.PackedAttention] = {}
        self.transition_cache: Dict[Any, Dict[str, torch.Tensor]] = {}
        self.forward_shapes: List[Tuple[int, ...]] = []

    # ---- entry ----
    def run(self):
        backend = None if self.config.backend == "auto" else self.config.backend
        with torch.no_grad(), _registry.use_backend(backend):
            transformer = self.pipe.transformer
            self.state = processors.install(transformer, self.adapter.model)
            if transformer not in self.handle._transformers:
                self.handle._transformers.append(transformer)
            self.prep = self.adapter.prepare(self.args, self.config)
            self._reset_cache_hooks()
            self.compiled = _compiled_blocks(transformer, self.config.compile_blocks)
            with self.compiled, _cached_rope(transformer):
                if self.config.enabled:
                    return self._run_dvg()
                return self._run_full()

    # ---- model evaluation ----
    def _tokens(self, shape) -> int:
        t, h, w = shape
        pt, ph, pw = self.adapter.patch
        return (t // pt) * (h // ph) * (w // pw)

    def _layout(self, shape, condition, indices) -> processors.PackedAttention:
        key = (tuple(shape), condition.name, tuple(indices))
        layout = self.layouts.get(key)
        if layout is None:
            n = self._tokens(shape)
            layout = processors.PackedAttention.prefix([n + length for length in condition.text_lengths],
                                                       n + condition.text_seq_len, self.prep.device)
            if self.config.fused_rope:  # RoPE inside the q/k packing instead of the per-shape tables
                pt, ph, pw = self.adapter.patch
                cfg = self.pipe.transformer.config
                grid = (shape[0] // pt, shape[1] // ph, shape[2] // pw)
                layout.attach_fused_rope([grid] * len(condition.text_lengths), condition.text_lengths, False,
                                         cfg.rope_axes_dim, cfg.rope_theta)
            if self.compiled.enabled:
                # the padded length bounds every segment and does not depend on the prompts' valid lengths, so
                # prompts of new lengths reuse the compiled blocks' graphs
                layout.for_compile(max_seqlen=n + condition.text_seq_len)
            self.layouts[key] = layout
        return layout

    def _velocity_group(self, group_latents, indices, axes, timestep_value, step, group_index=None) -> torch.Tensor:
        prep = self.prep
        transformer = self.pipe.transformer
        hidden = self.adapter.model_input(prep, group_latents, axes, indices)
        timestep = timestep_value.expand(group_latents.shape[0]).to(self.adapter.timestep_dtype(prep))
        shape = tuple(group_latents.shape[2:])

        extra = {}
        if getattr(transformer.config, "use_meanflow", False):
            # MeanFlow checkpoints take the next timestep of the array the loop iterates as "r" (0 at the end)
            extra["timestep_r"] = self._timestep_r(step).expand(group_latents.shape[0]).to(
                self.adapter.timestep_dtype(prep))

        def run_condition(condition, cache_name):
            condition = condition.select(indices)
            layout = self._layout(shape, condition, indices)
            self.forward_shapes.append(tuple(hidden.shape))
            # diffusers' cache hooks keep their state per cache context: one context per plan group, so samples
            # whose stage shapes differ never share cached residuals
            if group_index is not None:
                cache_name = f"{cache_name}/plan{group_index}"
            with self.state.activate(layout), transformer.cache_context(cache_name):
                return transformer(hidden_states=hidden, timestep=timestep, **extra, **condition.kwargs)[0]

        if isinstance(self.adapter, adapters.HunyuanVideo15Adapter):
            return self.adapter.guided_velocity(prep, step, timestep_value, run_condition)
        preds = [run_condition(c, c.name) for c in prep.conditions]
        return prep.guidance(preds)

    def _timestep_r(self, step: int) -> torch.Tensor:
        schedule = self.schedule
        if step + 1 >= self.prep.num_steps:
            return torch.zeros((), dtype=torch.float32, device=self.prep.device)
        stage_timesteps = getattr(self, "stage_timesteps", None)
        if stage_timesteps is not None:
            # the DVG loop: the schedule in force, already on the device (a per-step host float copied to
            # the device would be a synchronising copy inside the step loop)
            return stage_timesteps[step + 1]
        value = schedule.model_timestep(step + 1)
        return torch.as_tensor(value, dtype=torch.float32).to(self.prep.device)

    def _velocities(self, groups, stage: int, t, step: int) -> List[torch.Tensor]:
        """Velocity per group. One group: the transformer's own forward. Several (samples with different
        stage shapes): one packed forward per condition for the whole batch, when the model supports it."""
        if len(groups) == 1:
            g = groups[0]
            return [self._velocity_group(g.latents, g.indices, g.plan.stage_axes[stage], t, step)]
        packed = self._packed_forward()
        if packed is None:
            return [self._velocity_group(g.latents, g.indices, g.plan.stage_axes[stage], t, step, group_index=gi)
                    for gi, g in enumerate(groups)]
        prep = self.prep
        where = {}
        for gi, g in enumerate(groups):
            hidden = self.adapter.model_input(prep, g.latents, g.plan.stage_axes[stage], g.indices)
            for j, b in enumerate(g.indices):
                where[b] = hidden[j:j + 1]
        order = list(range(prep.batch))
        hidden_list = [where[b] for b in order]
        timestep = t.expand(prep.batch).to(self.adapter.timestep_dtype(prep))
        extra = {}
        if getattr(self.pipe.transformer.config, "use_meanflow", False):
            extra["timestep_r"] = self._timestep_r(step).expand(prep.batch).to(self.adapter.timestep_dtype(prep))

        def run_packed(condition, cache_name=None):
            kwargs = {k: v for k, v in condition.kwargs.items() if k not in ("attention_kwargs", "return_dict")}
            kwargs.update(condition.packed_kwargs, **extra)
            for h in hidden_list:
                self.forward_shapes.append(tuple(h.shape))
            with _lora_scale(self.pipe.transformer, condition.kwargs.get("attention_kwargs")):
                return packed(hidden_list, timestep, condition.text_lengths, **kwargs)

        if isinstance(self.adapter, adapters.HunyuanVideo15Adapter):
            per_sample = self.adapter.guided_velocity(prep, step, t, run_packed)
        else:
            preds = [run_packed(c) for c in prep.conditions]
            per_sample = [prep.guidance([p[b] for p in preds]) for b in order]
        return [torch.cat([per_sample[b] for b in g.indices], dim=0) for g in groups]

    def _packed_forward(self):
        """The per-sample packed forward for this transformer, or None where the per-group path must run
        (decided once per generation)."""
        if not hasattr(self, "_packed"):
            self._packed = self._make_packed_forward()
        return self._packed

    def _make_packed_forward(self):
        transformer = self.pipe.transformer
        if _has_forward_hooks(self.pipe.transformer):
            # Cache hooks (diffusers) and offload hooks (accelerate) wrap the modules' own forward methods,
            # which the packed forward bypasses: keep the per-group path, which calls them.
            return None
        # compile_blocks: the packed forward's per-block computations compile with the same arguments as the
        # blocks of the single-plan forward (one graph set per set of stage shapes; see the classes)
        compile_kwargs = self.compiled.kwargs if self.compiled.enabled else None
        cls = (processors.PackedHunyuanVideo15Forward if isinstance(self.adapter, adapters.HunyuanVideo15Adapter)
               else processors.PackedHunyuanVideoForward)
        return cls(transformer, self.state, self.config.fused_rope, compile_kwargs=compile_kwargs)

    # ---- enabled=False: full resolution, our attention path ----
    def _run_full(self):
        prep, pipe = self.prep, self.pipe
        schedule = self.schedule = _FullSchedule(pipe, prep.num_steps, prep.device, prep.sigmas)
        full_shape = self._latent_shape(prep)
        latents = self.adapter.prepare_noise(prep, full_shape, prep.generator, prep.latents, None)
        pipe._num_timesteps = len(schedule.timesteps)
        start = time.perf_counter()
        with pipe.progress_bar(total=prep.num_steps) as bar:
            bar.set_postfix_str(f"full grid {'x'.join(map(str, full_shape))}")
            for i in range(prep.num_steps):
                if pipe.interrupt:
                    continue
                t = schedule.model_timestep(i)
                pipe._current_timestep = t
                velocity = self._velocity_group(latents, list(range(prep.batch)), None, t, i)
                latents = self.adapter.post_step(prep, schedule.euler_step(latents, velocity, i), None)
                latents = self._callback(i, t, [_Group(list(range(prep.batch)), None, latents)])[0].latents
                bar.update()
        pipe._current_timestep = None
        loop_time = time.perf_counter() - start
        video = self.adapter.decode(prep, latents)
        pipe.maybe_free_model_hooks()
        tokens = self._tokens(full_shape)
        self.handle.last_report = {
            "schema_version": REPORT_SCHEMA_VERSION, "enabled": False, "pipeline": type(pipe).__name__,
            "model": self.adapter.model, "config": self.config.to_dict(), "num_steps": prep.num_steps,
            "latent_shape": list(full_shape), "forward_shapes": [list(s) for s in self.forward_shapes],
            "samples": [{"stage_shapes": [list(full_shape)], "token_steps": tokens * prep.num_steps,
                         "full_token_steps": tokens * prep.num_steps, "token_step_ratio": 1.0}
                        for _ in range(prep.batch)],
            "time_s": {"loop": loop_time},
        }
        return self.adapter.output(prep, video)

    def _latent_shape(self, prep) -> Tuple[int, int, int]:
        f = self.adapter.spatial_factor
        return ((prep.num_frames - 1) // 4 + 1, prep.height // f, prep.width // f)

    # ---- DVG ----
    def _check_steps(self, num_steps: int) -> None:
        from .planner import transition_steps
        steps = transition_steps(num_steps)
        last = num_steps - 1
        if len(steps) < 3 or steps[-1] >= last:
            if steps and steps[-1] >= last:
                raise ValueError(f"num_inference_steps={num_steps} puts a DVG transition at the final step "
                                 f"({steps[-1]}); allowed: at least 5 steps")
            if not self.config.allow_fewer_stages:
                raise ValueError(
                    f"num_inference_steps={num_steps} gives the transition steps {list(steps)}: only {len(steps) + 1} "
                    f"distinct stages instead of 4 (the output would stay at stage {len(steps)}'s size); allowed: at "
                    f"least 5 steps, or allow_fewer_stages=True to accept it")

    def _seeds(self, indices: Sequence[int]) -> List[int]:
        from .sampling import transition_seed
        config = self.config
        if config.transition_noise == "reference":
            return [config.noise_seed] * len(indices)
        generator = self.prep.generator
        out = []
        for b in indices:
            if isinstance(generator, list):
                out.append(transition_seed("seeded", int(generator[b].initial_seed()), 0))
            else:
                seed = int(generator.initial_seed()) if generator is not None else int(torch.initial_seed())
                out.append(transition_seed("seeded", seed, b))
        return out

    def _plans(self, grid, x0: torch.Tensor) -> List[Any]:
        """One plan per sample: from config.plan (a replayed report plan, explicit demands) or from x̂0.
        The planner is given the configured budget, so a budget_fallback="nearest" plan records its note."""
        from . import planner
        config, batch = self.config, self.prep.batch
        budget = config.budget
        replay = config.plan
        if replay is None:
            return planner.plan_from_x0(grid, self.prep.num_steps, budget, x0, plan_scope=config.plan_scope,
                                        budget_accounting=config.budget_accounting,
                                        budget_fallback=config.budget_fallback, check_shape=False)
        entries = replay if isinstance(replay, (list, tuple)) else [replay] * batch
        if len(entries) != batch:
            _checks.fail("plan", replay, f"one plan/demands entry, or a list of {batch} (one per sample)")
        plans = []
        for b, entry in enumerate(entries):
            if isinstance(entry, planner.Plan):
                plan = entry
            elif isinstance(entry, dict) and "stage_shapes" in entry:
                plan = planner.Plan.from_dict(entry["plan"] if "plan" in entry else entry)
            elif isinstance(entry, dict) and {"spatial_demand", "temporal_demand"} <= set(entry):
                plan = planner.plan_stages(grid, self.prep.num_steps, budget, entry["spatial_demand"],
                                           entry["temporal_demand"], budget_accounting=config.budget_accounting,
                                           budget_fallback=config.budget_fallback)
            else:
                _checks.fail(f"plan[{b}]", entry, "a planner.Plan, a plan dict from a report, or "
                                                  "{'spatial_demand': S, 'temporal_demand': M}")
            if plan.grid.latent_shape != grid.latent_shape or plan.num_steps != self.prep.num_steps:
                _checks.fail(f"plan[{b}]", entry, f"a plan for latent grid {grid.latent_shape} and "
                                                  f"{self.prep.num_steps} steps (got {plan.grid.latent_shape}, "
                                                  f"{plan.num_steps} steps)")
            plans.append(plan)
        return plans

    def _transition_group(self, x0: torch.Tensor, src_axes, dst_axes, to_stage: int, seeds: List[int],
                          sigma: torch.Tensor, latents_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x̂0 (B, C, t, h, w) on the current stage -> the next stage's re-noised latents (float32), with the fused
        `torch.ops.dvg.resample_renoise` (resize, 0→1 smoothing, coordinate noise and re-noise in one pass).

        latents_dtype: the dtype of the latents that entered this transition step. The reference rounds the
        resized x̂0 to it before the smoothing and the re-noise (dvg-spec §12.3 step 4, quirk Q14). That only
        changes anything below float32 — latents a previous transition cast to the model dtype, i.e. two
        transitions in a row (e.g. 5 steps: transitions at 1, 2, 3) — and the fused op keeps x̂0_up in float32
        from the resize to the re-noise, so those transitions run the reference composition
        (`sampling.resample_and_renoise` with the rounding) instead; they are rare and the result is exact."""
        from . import sampling
        from .ops.resample import resample_renoise, transition_tensors
        if torch.finfo(latents_dtype).bits < 32:
            return sampling.resample_and_renoise(
                x0, tuple(len(a) for a in dst_axes), sampling.stage_anchors(src_axes, dst_axes), dst_axes, sigma,
                list(seeds), smooth=to_stage == 1, smoothing_padding=self.config.smoothing_padding,
                out_dtype=torch.float32, x0_up_dtype=latents_dtype)
        key = (tuple(map(tuple, src_axes)), tuple(map(tuple, dst_axes)), x0.device)
        tensors = self.transition_cache.get(key)
        if tensors is None:
            tensors = self.transition_cache[key] = transition_tensors(src_axes, dst_axes, x0.device)
        smoothing = {"zeros": 1, "exclude": 2}[self.config.smoothing_padding] if to_stage == 1 else 0
        seeds_tensor = torch.tensor(seeds, dtype=torch.int64).to(x0.device)
        # sigma lives on the host (the schedule is host-side), so float() reads nothing back from the device;
        # validate=False: the anchors and coordinates come from the planner's nested axes on the host.
        return resample_renoise(x0.float(), seeds=seeds_tensor, sigma=float(sigma), smoothing=smoothing,
                                out_dtype=torch.float32, validate=False, **tensors)

    def _run_dvg(self):
        from . import planner, sampling
        prep, pipe, config, adapter = self.prep, self.pipe, self.config, self.adapter
        if prep.sigmas is not None:
            _checks.fail("sigmas", prep.sigmas, "None with DVG enabled (DVG re-shifts the schedule per stage; "
                                                "pass enabled=False to use custom sigmas)")
        num_steps = prep.num_steps
        self._check_steps(num_steps)
        grid = planner.full_grid(adapter.model, prep.height, prep.width, prep.num_frames)
        # Before any model compute: an infeasible budget fails here, stating the feasible range.
        budget = planner.check_budget(grid, num_steps, config.budget, budget_accounting=config.budget_accounting,
                                      budget_fallback=config.budget_fallback)
        initial = planner.initial_plan(grid, num_steps, budget, budget_accounting=config.budget_accounting)
        schedule = self.schedule = sampling.StageSchedule(num_steps, adapter.model, adapter.stage0_shift(),
                                                          config.stage_shifts, hv15_timesteps=config.hv15_timesteps)
        stage0_shape = tuple(initial.stage_shapes[0])
        latents = adapter.prepare_noise(prep, stage0_shape, prep.generator, prep.latents, initial.stage_axes[0])
        if tuple(latents.shape[2:]) != stage0_shape:
            _checks.fail("latents", prep.latents, f"a tensor of the stage-0 shape (B, C, {stage0_shape[0]}, "
                                                  f"{stage0_shape[1]}, {stage0_shape[2]}) with DVG enabled")
        groups = [_Group(list(range(prep.batch)), initial, latents)]
        pipe._num_timesteps = num_steps
        stage_times = [0.0, 0.0, 0.0, 0.0]
        transition_time = 0.0
        calls = [0, 0, 0, 0]
        # Stage times are taken between device syncs at the stage boundaries (the three transitions and the
        # end), so on CUDA they include the queued kernels; the steps in between never sync.
        sync = prep.device.type == "cuda"
        demands: List[Optional[Dict[str, float]]] = [None] * prep.batch
        loop_start = stage_start = time.perf_counter()

        def stage_timesteps() -> torch.Tensor:
            # The model timesteps of the schedule in force, copied to the device once per stage (the schedule
            # is re-shifted at each transition): a per-step torch.tensor(..., device="cuda") would be a
            # synchronising host->device copy inside the step loop (found with CUDA's sync debug mode).
            values = [schedule.model_timestep(j) for j in range(num_steps)]
            self.stage_timesteps = torch.tensor(values, dtype=torch.float32).to(prep.device)
            return self.stage_timesteps

        timesteps_on_device = stage_timesteps()
        with pipe.progress_bar(total=num_steps) as bar:
            bar.set_postfix_str(self._stage_text(0, groups))
            for i in range(num_steps):
                if pipe.interrupt:
                    continue
                stage = schedule.stage
                t = timesteps_on_device[i]
                pipe._current_timestep = t
                velocities = self._velocities(groups, stage, t, i)
                calls[stage] += 1
                if schedule.is_transition(i):
                    if sync:
                        torch.cuda.synchronize(prep.device)
                    mid = time.perf_counter()
                    stage_times[stage] += mid - stage_start
                    sigma_x0 = schedule.x0_sigma(i)
                    x0s = [sampling.x0_from_velocity(g.latents, v, sigma_x0) for g, v in zip(groups, velocities)]
                    # per group, the dtype the reference rounds x̂0_up to (quirk Q14)
                    dtypes = [g.latents.dtype for g in groups]
                    if stage == 0:
                        x0 = x0s[0]
                        plans = self._plans(grid, x0)
                        for b, plan in enumerate(plans):
                            demands[b] = {"spatial_demand": plan.spatial_demand,
                                          "temporal_demand": plan.temporal_demand}
                        groups, x0s = self._regroup(plans, x0)
                        dtypes = dtypes[:1] * len(groups)  # stage 0 is one group: its dtype for every new one
                    info = schedule.begin_transition(i)
                    self._reset_cache_hooks()
                    sigma_new = schedule.sigmas[info.renoise_sigma_index]
                    new_groups = []
                    for g, x0, dtype in zip(groups, x0s, dtypes):
                        nxt = self._transition_group(x0, g.plan.stage_axes[stage], g.plan.stage_axes[stage + 1],
                                                     stage + 1, self._seeds(g.indices), sigma_new, dtype)
                        nxt = adapter.post_step(prep, nxt, g.plan.stage_axes[stage + 1], g.indices)
                        new_groups.append(_Group(g.indices, g.plan, nxt.to(prep.dtype)))
                    groups = new_groups
                    timesteps_on_device = stage_timesteps()
                    if sync:
                        torch.cuda.synchronize(prep.device)
                    stage_start = time.perf_counter()
                    transition_time += stage_start - mid
                    bar.set_postfix_str(self._stage_text(schedule.stage, groups))
                else:
                    for g, v in zip(groups, velocities):
                        g.latents = adapter.post_step(prep, schedule.euler_step(g.latents, v, i),
                                                      g.plan.stage_axes[stage], g.indices)
                groups = self._callback(i, t, groups)
                bar.update()
        if sync:
            torch.cuda.synchronize(prep.device)
        end = time.perf_counter()
        stage_times[schedule.stage] += end - stage_start
        loop_time = end - loop_start
        pipe._current_timestep = None
        video = self._decode(groups)
        pipe.maybe_free_model_hooks()
        self.handle.last_report = self._report(grid, budget, schedule, groups, demands, calls, stage_times,
                                               transition_time, loop_time)
        return adapter.output(prep, video)

    def _reset_cache_hooks(self) -> None:
        """diffusers' cache hooks (FirstBlockCache, TaylorSeer, MagCache, ...) hold residuals and step counters of
        the previous stage's grid; a transition changes the grid and the schedule, so their state starts over."""
        transformer = self.pipe.transformer
        if getattr(transformer, "is_cache_enabled", False):
            transformer._reset_stateful_cache()

    def _regroup(self, plans, x0: torch.Tensor):
        """Split the batch into groups of samples with identical plans (first-appearance order)."""
        keyed: Dict[Any, List[int]] = {}
        for b, plan in enumerate(plans):
            keyed.setdefault((plan.stage_shapes, plan.stage_axes), []).append(b)
        groups, x0s = [], []
        for indices in keyed.values():
            index = torch.tensor(indices, device=x0.device)
            part = x0 if len(indices) == x0.shape[0] else x0.index_select(0, index)
            groups.append(_Group(indices, plans[indices[0]], None))
            x0s.append(part)
        return groups, x0s

    def _stage_text(self, stage: int, groups) -> str:
        shapes = sorted({tuple(g.latents.shape[2:]) if g.latents is not None else tuple(g.plan.stage_shapes[stage])
                         for g in groups})
        return f"DVG stage {stage} grid " + ", ".join("x".join(map(str, s)) for s in shapes)

    def _callback(self, i, t, groups):
        prep = self.prep
        if prep.callback is None:
            return groups
        if len(groups) == 1:
            latents_view = groups[0].latents
        else:
            per_sample = {}
            for g in groups:
                for j, b in enumerate(g.indices):
                    per_sample[b] = g.latents[j:j + 1]
            latents_view = [per_sample[b] for b in range(prep.batch)]
        available = {"latents": latents_view, "prompt_embeds": prep.extra.get("prompt_embeds")}
        kwargs = {k: available[k] for k in prep.callback_inputs if k in available}
        outputs = prep.callback(self.pipe, i, t, kwargs) or {}
        new = outputs.pop("latents", None)
        if new is None or new is latents_view:
            return groups
        if len(groups) == 1:
            if not isinstance(new, torch.Tensor) or new.shape != groups[0].latents.shape:
                _checks.fail("callback_on_step_end()['latents']", new,
                             f"a tensor of the current stage's shape {tuple(groups[0].latents.shape)}")
            groups[0].latents = new
            return groups
        if not isinstance(new, (list, tuple)) or len(new) != prep.batch:
            _checks.fail("callback_on_step_end()['latents']", new, f"a list of {prep.batch} per-sample tensors")
        for g in groups:
            g.latents = torch.cat([new[b] for b in g.indices], dim=0)
        return groups

    def _decode(self, groups):
        prep = self.prep
        if len(groups) == 1:
            return self.adapter.decode(prep, groups[0].latents)
        shapes = {tuple(g.latents.shape[2:]) for g in groups}
        order = sorted((b, g, j) for g in groups for j, b in enumerate(g.indices))
        if len(shapes) == 1:
            latents = torch.cat([g.latents[j:j + 1] for _, g, j in order], dim=0)
            return self.adapter.decode(prep, latents)
        # Only with allow_fewer_stages: samples end at different (non-full) sizes.
        return [self.adapter.decode(prep, g.latents[j:j + 1]) for _, g, j in order]

    # ---- report ----
    def _report(self, grid, budget, schedule, groups, demands, calls, stage_times, transition_time, loop_time):
        prep = self.prep
        heads = self.pipe.transformer.config.num_attention_heads
        head_dim = self.pipe.transformer.config.attention_head_dim
        executed = tuple(calls)
        full_tokens = self._tokens(grid.latent_shape)
        samples = [None] * prep.batch
        for g in groups:
            plan = g.plan
            tokens = [self._tokens(s) for s in plan.stage_shapes]
            for j, b in enumerate(g.indices):
                text = prep.conditions[0].text_lengths[b]
                token_steps = sum(n * c for n, c in zip(tokens, executed))
                attn = sum(c * 4 * heads * head_dim * (n + text) ** 2 for n, c in zip(tokens, executed))
                attn_full = prep.num_steps * 4 * heads * head_dim * (full_tokens + text) ** 2
                samples[b] = {
                    "demands": demands[b],
                    "plan": plan.to_dict(),
                    "chosen": {"s2": plan.s2, "t23": plan.t23, "t1": plan.t1, "density": plan.density},
                    "stage_shapes": [list(s) for s in plan.stage_shapes],
                    "stage_axes": [[list(a) for a in axes] for axes in plan.stage_axes],
                    "tokens_per_stage": tokens,
                    "text_tokens": text,
                    "token_steps": token_steps,
                    "full_token_steps": full_tokens * prep.num_steps,
                    "token_step_ratio": token_steps / (full_tokens * prep.num_steps),
                    "attention_flops_per_layer": attn,
                    "full_attention_flops_per_layer": attn_full,
                    "attention_flop_ratio": attn / attn_full,
                }
        return {
            "schema_version": REPORT_SCHEMA_VERSION,
            "enabled": True,
            "pipeline": type(self.pipe).__name__,
            "model": self.adapter.model,
            "config": self.config.to_dict(),
            "budget": self.config.budget,
            "budget_used": budget,
            "num_steps": prep.num_steps,
            "grid": grid.to_dict(),
            "transition_steps": list(schedule.transition_steps),
            "executed_model_calls": list(executed),
            "transitions": [vars(info) for info in schedule.history],
            "forward_shapes": [list(s) for s in self.forward_shapes],
            "samples": samples,
            "time_s": {"per_stage": stage_times, "transitions": transition_time, "loop": loop_time},
        }
