"""Per-pipeline differences, and only those (DESIGN.md §4): which backbone the planner sees, VAE
factors and pixel rounding, the stage-0 shift, how prompts are encoded (through the pipeline's own
methods), how guidance is applied, how the transformer input and its conditioning are built per stage,
and the text-mask layout that decides which tokens the packed attention keeps.

Each adapter turns the bound arguments of the pipeline's `__call__` into a `Prepared` generation:
`conditions` (one per model call of a step: the prompt, and the negative prompt under true CFG), each
with its transformer keyword arguments and its per-sample number of valid text tokens (read to the
host once, here, from the masks; they give the packed attention its `cu_seqlens` and `max_seqlen`
without any read in the step loop).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import _checks

SUPPORTED_PIPELINES = ("HunyuanVideoPipeline", "HunyuanVideoImageToVideoPipeline", "HunyuanVideo15Pipeline",
                       "HunyuanVideo15ImageToVideoPipeline")


@dataclasses.dataclass
class Condition:
    """One model call per step (the prompt, or the negative prompt under true CFG).

    kwargs: transformer keyword arguments except hidden_states/timestep; batch-first tensors of B samples.
    text_lengths: per sample, the number of valid (attended) non-latent tokens, host ints.
    text_seq_len: the padded length of the non-latent part the transformer sees.
    """

    name: str
    kwargs: Dict[str, Any]
    text_lengths: List[int]
    text_seq_len: int
    # per-sample host-side extras for the packed forward (HunyuanVideo-1.5: "text_parts")
    packed_kwargs: Dict[str, List[Any]] = dataclasses.field(default_factory=dict)
    # select()'s results per sample group: the per-group path selects every step, and rebuilding would put
    # host->device index copies (each a stream sync on CUDA) and gathers into the step loop
    _selections: Dict[Tuple[int, ...], "Condition"] = dataclasses.field(default_factory=dict, repr=False,
                                                                         compare=False)

    def select(self, indices: Sequence[int]) -> "Condition":
        """The condition restricted to the samples `indices` (for per-plan sample groups), built once per group."""
        key = tuple(indices)
        if key == tuple(range(len(self.text_lengths))):
            return self
        if key not in self._selections:
            index = torch.tensor(key, dtype=torch.long)
            kwargs = {k: (v.index_select(0, index.to(v.device)) if isinstance(v, torch.Tensor) and v.dim() > 0
                          and v.shape[0] == len(self.text_lengths) else v) for k, v in self.kwargs.items()}
            packed = {k: [v[i] for i in key] for k, v in self.packed_kwargs.items()}
            self._selections[key] = Condition(self.name, kwargs, [self.text_lengths[i] for i in key],
                                              self.text_seq_len, packed)
        return self._selections[key]


@dataclasses.dataclass
class Prepared:
    """A generation after prompt encoding: everything the denoising loop needs."""

    batch: int
    height: int
    width: int
    num_frames: int
    num_steps: int
    device: torch.device
    dtype: torch.dtype
    latent_channels: int
    conditions: List[Condition]
    guidance: Callable[[List[torch.Tensor]], torch.Tensor]
    generator: Any
    latents: Optional[torch.Tensor]
    output_type: str
    return_dict: bool
    callback: Optional[Callable]
    callback_inputs: List[str]
    sigmas: Optional[Sequence[float]]
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)


def prefix_lengths(name: str, mask: torch.Tensor) -> List[int]:
    """mask: (B, L) 0/1 -> per-row count of ones, after checking each row is a prefix mask (ones, then zeros).

    diffusers' HunyuanVideo transformers treat the text mask as a prefix (they keep the first `sum` tokens);
    a mask with holes would silently attend to the wrong tokens, so it is refused here. One host read.
    """
    _checks.check_tensor(name, mask, ndim=2)
    host = mask.detach().to("cpu")
    valid = host != 0
    counts = valid.sum(dim=1)
    expected = torch.arange(host.shape[1])[None, :] < counts[:, None]
    bad = (valid != expected).any(dim=1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name} row {row} is not a prefix mask (ones then zeros): "
                         f"{host[row].to(torch.int64).tolist()}; allowed: masks whose valid tokens come first, "
                         f"as the pipeline's tokenizers produce them")
    return [int(c) for c in counts.tolist()]


class Adapter:
    """Base: what the engine asks of a pipeline."""

    model = "hunyuan_video"
    pipeline_class = ""
    patch = (1, 2, 2)
    spatial_factor = 8  # pixels per latent cell

    def __init__(self, pipe) -> None:
        self.pipe = pipe

    # ---- geometry -------------------------------------------------------------------------------
    def stage0_shift(self) -> float:
        return float(self.pipe.scheduler.config.get("shift", 1.0))

    def check_geometry(self, height: int, width: int, num_frames: int, round_num_frames: bool) -> Tuple[int, int, int]:
        height = _checks.check_int("height", height, minimum=1)
        width = _checks.check_int("width", width, minimum=1)
        num_frames = _checks.check_int("num_frames", num_frames, minimum=1)
        cell = self.spatial_factor * self.patch[1]
        for name, value in (("height", height), ("width", width)):
            if value % cell:
                latent = value // self.spatial_factor
                raise ValueError(
                    f"{name}={value} gives {value / self.spatial_factor:g} latent cells (VAE factor "
                    f"{self.spatial_factor}); the transformer's patch size {self.patch[1]} needs a whole, "
                    f"{'even ' if self.patch[1] == 2 else ''}number of latent cells, which diffusers would silently "
                    f"truncate to {latent - latent % self.patch[1]}; allowed: a multiple of {cell}, e.g. "
                    f"{max(cell, value - value % cell)} or {value - value % cell + cell}")
        if (num_frames - 1) % 4:
            lower = num_frames - (num_frames - 1) % 4
            if not round_num_frames:
                raise ValueError(
                    f"num_frames={num_frames} is not of the form 4k+1 (the causal VAE compresses time by 4); "
                    f"diffusers would silently use {lower}. Allowed: 4k+1 (e.g. {lower} or {lower + 4}), or pass "
                    f"round_num_frames=True to round to the nearest such value")
            upper = lower + 4
            rounded = lower if (num_frames - lower) <= (upper - num_frames) else upper
            import warnings
            warnings.warn(f"num_frames={num_frames} rounded to {rounded} (4k+1) because round_num_frames=True",
                          stacklevel=4)
            num_frames = rounded
        return height, width, num_frames

    # ---- per call ----------------------------------------------------------------------------------
    def prepare(self, args: Dict[str, Any], config) -> Prepared:  # pragma: no cover - abstract
        raise NotImplementedError

    def post_step(self, prep: Prepared, latents: torch.Tensor, stage_axes, sample_indices=None) -> torch.Tensor:
        """Latents after an Euler step or a transition (token_replace pins frame 0 to the image)."""
        return latents

    def timestep_dtype(self, prep: Prepared) -> torch.dtype:
        """dtype of the timestep the transformer receives. The HunyuanVideo pipelines keep float32 latents and
        pass float32 timesteps; the DVG transitions' cast of the latents to the model dtype (quirk Q14) must not
        round the timestep of the following step."""
        return torch.float32

    def model_input(self, prep: Prepared, latents: torch.Tensor, stage_axes, sample_indices) -> torch.Tensor:
        """The transformer's `hidden_states` for `latents` (B, C, T, H, W) at a stage with nested `stage_axes`."""
        return latents.to(prep.dtype)

    def decode(self, prep: Prepared, latents: torch.Tensor):
        pipe = self.pipe
        if prep.output_type == "latent":
            return latents
        latents = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
        video = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.video_processor.postprocess_video(video, output_type=prep.output_type)

    def output(self, prep: Prepared, video):
        raise NotImplementedError


def _text_len_check(name, embeds, mask):
    if mask is None:
        raise ValueError(f"{name} is required with precomputed prompt embeddings; allowed: a (B, L) prefix mask")
    if embeds.shape[:2] != mask.shape[:2]:
        _checks.fail(name, mask, f"a mask of shape {tuple(embeds.shape[:2])} matching the embeddings")


class HunyuanVideoAdapter(Adapter):
    """HunyuanVideoPipeline (T2V): embedded guidance (guidance-distilled), optional true CFG."""

    model = "hunyuan_video"
    pipeline_class = "HunyuanVideoPipeline"
    patch = (1, 2, 2)

    def __init__(self, pipe) -> None:
        super().__init__(pipe)
        self.spatial_factor = int(getattr(pipe, "vae_scale_factor_spatial", 8))

    # diffusers' HunyuanVideoPipeline.encode_prompt repeats what it encodes once per video; the I2V pipeline's
    # encoders (Llava and CLIP) never do, so its adapter repeats encoded embeddings itself
    encoder_repeats_videos = True

    def latent_channels(self) -> int:
        return int(self.pipe.transformer.config.in_channels)

    def _encode_extra(self, args, negative: bool) -> Dict[str, Any]:
        return {}

    def _check_inputs(self, args, height, width, callback_inputs) -> None:
        self.pipe.check_inputs(args["prompt"], args["prompt_2"], height, width, args["prompt_embeds"], callback_inputs,
                               args["prompt_template"])

    def _encode(self, args, device, transformer_dtype, negative: bool):
        pipe = self.pipe
        prefix = "negative_" if negative else ""
        embeds, pooled, mask = pipe.encode_prompt(
            **self._encode_extra(args, negative),
            prompt=args[prefix + "prompt"], prompt_2=args[prefix + "prompt_2"],
            prompt_template=args["prompt_template"], num_videos_per_prompt=args["num_videos_per_prompt"],
            prompt_embeds=args[prefix + "prompt_embeds"], pooled_prompt_embeds=args[prefix + "pooled_prompt_embeds"],
            prompt_attention_mask=args[prefix + "prompt_attention_mask"], device=device,
            max_sequence_length=args["max_sequence_length"])
        _text_len_check(prefix + "prompt_attention_mask", embeds, mask)
        videos = int(args["num_videos_per_prompt"])
        if videos > 1:
            # encode_prompt passes precomputed embeddings through unchanged (and the I2V pipeline's does not repeat
            # what it encodes either): the transformer would then fail on mismatched batches. Repeated as diffusers
            # repeats per video, prompt-major with each prompt's videos consecutive, so the per-sample text lengths
            # read from the mask below repeat the same way.
            if args[prefix + "prompt_embeds"] is not None or not self.encoder_repeats_videos:
                embeds, mask = embeds.repeat_interleave(videos, 0), mask.repeat_interleave(videos, 0)
            if args[prefix + "pooled_prompt_embeds"] is not None or not self.encoder_repeats_videos:
                pooled = pooled.repeat_interleave(videos, 0)
        lengths = prefix_lengths(prefix + "prompt_attention_mask", mask)
        return embeds.to(transformer_dtype), pooled.to(transformer_dtype), mask.to(transformer_dtype), lengths

    def prepare(self, args: Dict[str, Any], config) -> Prepared:
        pipe = self.pipe
        callback = args["callback_on_step_end"]
        callback_inputs = args["callback_on_step_end_tensor_inputs"]
        from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
            callback_inputs = callback.tensor_inputs
        height, width, num_frames = self.check_geometry(args["height"], args["width"], args["num_frames"],
                                                        config.round_num_frames)
        self._check_inputs(args, height, width, callback_inputs)
        has_neg = args["negative_prompt"] is not None or (
            args["negative_prompt_embeds"] is not None and args["negative_pooled_prompt_embeds"] is not None)
        true_cfg = float(args["true_cfg_scale"])
        do_true_cfg = true_cfg > 1 and has_neg
        pipe._guidance_scale = args["guidance_scale"]
        pipe._attention_kwargs = args["attention_kwargs"]
        pipe._current_timestep = None
        pipe._interrupt = False
        device = pipe._execution_device
        prompt = args["prompt"]
        batch = 1 if isinstance(prompt, str) else (len(prompt) if prompt is not None else args["prompt_embeds"].shape[0])
        batch *= int(args["num_videos_per_prompt"])
        dtype = pipe.transformer.dtype
        embeds, pooled, mask, lengths = self._encode(args, device, dtype, negative=False)
        guidance = None
        if pipe.transformer.config.guidance_embeds:
            guidance = torch.tensor([args["guidance_scale"]] * batch, dtype=dtype, device=device) * 1000.0
        common = {"guidance": guidance, "attention_kwargs": args["attention_kwargs"], "return_dict": False}
        conditions = [Condition("cond", dict(encoder_hidden_states=embeds, encoder_attention_mask=mask,
                                             pooled_projections=pooled, **common), lengths, embeds.shape[1])]
        if do_true_cfg:
            n_embeds, n_pooled, n_mask, n_lengths = self._match_negative_batch(
                args, batch, *self._encode(args, device, dtype, negative=True))
            conditions.append(Condition("uncond", dict(encoder_hidden_states=n_embeds, encoder_attention_mask=n_mask,
                                                       pooled_projections=n_pooled, **common),
                                        n_lengths, n_embeds.shape[1]))

            def combine(preds, scale=true_cfg):
                return preds[1] + scale * (preds[0] - preds[1])
        else:
            def combine(preds):
                return preds[0]
        prep = Prepared(batch=batch, height=height, width=width, num_frames=num_frames,
                        num_steps=int(args["num_inference_steps"]), device=device, dtype=dtype,
                        latent_channels=self.latent_channels(), conditions=conditions, guidance=combine,
                        generator=args["generator"], latents=args["latents"], output_type=args["output_type"],
                        return_dict=args["return_dict"], callback=callback, callback_inputs=list(callback_inputs or []),
                        sigmas=args["sigmas"], extra={"prompt_embeds": embeds})
        self._prepare_extra(prep, args)
        return prep

    def _prepare_extra(self, prep: Prepared, args) -> None:
        pass

    @staticmethod
    def _match_negative_batch(args, batch: int, embeds, pooled, mask, lengths):
        """embeds (N, L, D), pooled (N, P), mask (N, L), lengths [N] of the negative prompt(s) -> N = batch rows.

        One negative prompt for several prompts is used for each of them, as diffusers' other pipelines do with a
        string negative prompt (HunyuanVideo's would fail on the mismatched batches in the transformer)."""
        rows, videos = embeds.shape[0], int(args["num_videos_per_prompt"])
        if rows == batch:
            return embeds, pooled, mask, lengths
        prompts = batch // videos
        if rows == videos:
            # the rows are the one negative prompt's videos, all equal: any tiling keeps prompt-major order
            return (embeds.repeat(prompts, 1, 1), pooled.repeat(prompts, 1), mask.repeat(prompts, 1),
                    lengths * prompts)
        name = "negative_prompt" if args["negative_prompt"] is not None else "negative_prompt_embeds"
        _checks.fail(name, args[name], f"one negative prompt (used for every prompt) or {prompts}, one per prompt "
                                       f"(got {rows // videos})")

    def prepare_noise(self, prep: Prepared, shape, generator, latents=None, stage_axes=None) -> torch.Tensor:
        """Stage noise (B, C, T, H, W) float32 from the user's generator, through the pipeline's own method."""
        t, h, w = shape
        return self.pipe.prepare_latents(prep.batch, prep.latent_channels, h * self.spatial_factor,
                                         w * self.spatial_factor, (t - 1) * 4 + 1, torch.float32, prep.device,
                                         generator, latents)


    def output(self, prep: Prepared, video):
        from diffusers.pipelines.hunyuan_video.pipeline_output import HunyuanVideoPipelineOutput
        if not prep.return_dict:
            return (video,)
        return HunyuanVideoPipelineOutput(frames=video)


def _subsample(image_latents: torch.Tensor, stage_axes) -> torch.Tensor:
    """image_latents (B, C, 1, H, W) at full resolution -> rows/columns of the stage's nested axes (no filtering)."""
    if stage_axes is None:
        return image_latents
    rows = torch.tensor(list(stage_axes[1]), device=image_latents.device)
    cols = torch.tensor(list(stage_axes[2]), device=image_latents.device)
    return image_latents.index_select(3, rows).index_select(4, cols)


def _prompt_count(args, prefix: str) -> int:
    """How many prompts (before the per-video repeat) the `prefix`ed prompt arguments hold."""
    prompt = args[prefix + "prompt"]
    if isinstance(prompt, str):
        return 1
    if prompt is not None:
        return len(prompt)
    embeds = args[prefix + "prompt_embeds"]
    return int(embeds.shape[0]) if embeds is not None else 1


def _image_count(image) -> int:
    """Images in a pipeline image input: a list, or a batched (4-D) tensor/array, holds several; anything else
    (PIL image, 3-D tensor/array) is one, as diffusers' VideoProcessor and the CLIP image processor count them."""
    if isinstance(image, (list, tuple)):
        return len(image)
    if getattr(image, "ndim", 0) == 4:
        return int(image.shape[0])
    return 1


def _repeat_image(image, count: int):
    """One image input -> `count` copies in the same kind of input (a list, or a batched tensor/array); an input
    that already holds several images is returned unchanged."""
    if count <= 1 or _image_count(image) != 1:
        return image
    if isinstance(image, (list, tuple)):
        return list(image) * count
    if getattr(image, "ndim", 0) == 4:
        if isinstance(image, torch.Tensor):
            return image.expand(count, *image.shape[1:])
        import numpy as np
        return np.repeat(image, count, axis=0)
    return [image] * count


class HunyuanVideoI2VAdapter(HunyuanVideoAdapter):
    """HunyuanVideoImageToVideoPipeline. The image latent is encoded once at full resolution and, per stage,
    sub-sampled on the stage's nested (h, w) axes (dvg-spec §13's HunyuanVideo-1.5 rule, applied to this
    layout): `latent_concat` puts it on frame 0 of the condition channels with a mask channel; `token_replace`
    replaces latent frame 0 with it (frame 0 then gets its own t=0 modulation inside the transformer)."""

    pipeline_class = "HunyuanVideoImageToVideoPipeline"
    encoder_repeats_videos = False

    def latent_channels(self) -> int:
        cfg = self.pipe.transformer.config
        return (cfg.in_channels - 1) // 2 if cfg.image_condition_type == "latent_concat" else cfg.in_channels

    @property
    def condition_type(self) -> str:
        return self.pipe.transformer.config.image_condition_type

    def _check_inputs(self, args, height, width, callback_inputs) -> None:
        self.pipe.check_inputs(args["prompt"], args["prompt_2"], height, width, args["prompt_embeds"], callback_inputs,
                               args["prompt_template"], args["true_cfg_scale"], args["guidance_scale"])
        images, prompts = _image_count(args["image"]), _prompt_count(args, "")
        if images not in (1, prompts):
            # refused here: Llava would fail with "Image features and image tokens do not match"
            raise ValueError(f"image=<{images} images> is invalid for {prompts} prompts; allowed: one image (used "
                             f"for every prompt) or a list of {prompts} images, one per prompt")

    def _encode_extra(self, args, negative: bool) -> Dict[str, Any]:
        interleave = args["image_embed_interleave"]
        if interleave is None:
            interleave = {"latent_concat": 2, "token_replace": 4}.get(self.condition_type, 1)
        # Llava encodes prompt i with image i: one image for several prompts is repeated per prompt (the pipeline
        # passes it as is, and Llava then fails on image features fewer than the prompts' image tokens)
        prompts = _prompt_count(args, "negative_" if negative else "")
        if negative:
            import PIL.Image
            # the pipeline's black image, with its default interleave (it passes none for the negative prompt)
            image = PIL.Image.new("RGB", (args["width"], args["height"]), 0)
            return {"image": _repeat_image(image, prompts)}
        return {"image": _repeat_image(args["image"], prompts), "image_embed_interleave": interleave}

    def _prepare_extra(self, prep: Prepared, args) -> None:
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import retrieve_latents
        pipe = self.pipe
        image = pipe.video_processor.preprocess(args["image"], prep.height, prep.width).to(prep.device, pipe.vae.dtype)
        image = image.unsqueeze(2)
        # As the pipeline's prepare_latents: one encode per image, batch 1 each (a batched encode may round
        # differently). The argmax (mode) latent consumes no generator, so each distinct image is encoded once,
        # then shared: one image by every sample, image i by the videos of prompt i (prompt-major, as the prompt
        # embeddings are repeated); the pipeline instead indexes the images per sample and fails for both.
        latents = [retrieve_latents(pipe.vae.encode(img.unsqueeze(0)), None, "argmax") for img in image]
        latents = torch.cat(latents, dim=0).to(torch.float32) * pipe.vae_scaling_factor
        if latents.shape[0] == 1:
            latents = latents.expand(prep.batch, -1, -1, -1, -1)
        else:
            latents = latents.repeat_interleave(prep.batch // latents.shape[0], 0)
        prep.extra["image_latents"] = latents

    def prepare_noise(self, prep: Prepared, shape, generator, latents=None, stage_axes=None) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor
        t, h, w = shape
        if latents is None:
            latents = randn_tensor((prep.batch, prep.latent_channels, t, h, w), generator=generator,
                                   device=prep.device, dtype=torch.float32)
        else:
            latents = latents.to(device=prep.device, dtype=torch.float32)
        image = _subsample(prep.extra["image_latents"], stage_axes).to(latents.dtype)
        # the pipeline's initial blend of the image into the noise, on the stage-0 grid
        mix = torch.tensor([0.999], device=prep.device)
        return latents * mix + image.expand(-1, -1, t, -1, -1) * (1 - mix)

    @staticmethod
    def _stage_image(prep: Prepared, stage_axes, sample_indices, batch: int) -> torch.Tensor:
        """(len(sample_indices) or batch, C, 1, h, w): the samples' image latents on the stage's axes, cached per
        (axes, samples) for the call: rebuilding it each step would put host->device index copies (each a
        stream sync on CUDA) and gathers into the step loop."""
        indices = tuple(range(batch)) if sample_indices is None else tuple(sample_indices)
        key = (None if stage_axes is None else tuple(tuple(a) for a in stage_axes), indices)
        cache = prep.extra.setdefault("stage_images", {})
        if key not in cache:
            full = prep.extra["image_latents"]
            cache[key] = _subsample(full.index_select(0, torch.tensor(indices, device=full.device)), stage_axes)
        return cache[key]

    def model_input(self, prep: Prepared, latents: torch.Tensor, stage_axes, sample_indices) -> torch.Tensor:
        image = self._stage_image(prep, stage_axes, sample_indices, latents.shape[0]).to(latents.dtype)
        if self.condition_type == "token_replace":
            return torch.cat([image, latents[:, :, 1:]], dim=2).to(prep.dtype)
        cond = torch.zeros_like(latents)
        cond[:, :, :1] = image
        mask = torch.zeros_like(latents[:, :1])
        mask[:, :, 0] = 1
        return torch.cat([latents, cond, mask], dim=1).to(prep.dtype)

    def post_step(self, prep: Prepared, latents: torch.Tensor, stage_axes, sample_indices=None) -> torch.Tensor:
        if self.condition_type != "token_replace":
            return latents
        image = self._stage_image(prep, stage_axes, sample_indices, latents.shape[0]).to(latents.dtype)
        return torch.cat([image, latents[:, :, 1:]], dim=2)

    def decode(self, prep: Prepared, latents: torch.Tensor):
        pipe = self.pipe
        concat = self.condition_type == "latent_concat"
        if prep.output_type == "latent":
            return latents[:, :, 1:] if concat else latents
        video = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae_scaling_factor, return_dict=False)[0]
        if concat:
            video = video[:, :, 4:]
        return pipe.video_processor.postprocess_video(video, output_type=prep.output_type)


class HunyuanVideo15Adapter(Adapter):
    """HunyuanVideo15Pipeline (T2V): true CFG through `pipe.guider`; 729 masked image tokens skipped."""

    model = "hunyuan_video_1_5"
    pipeline_class = "HunyuanVideo15Pipeline"
    patch = (1, 1, 1)

    def __init__(self, pipe) -> None:
        super().__init__(pipe)
        self.spatial_factor = int(getattr(pipe, "vae_scale_factor_spatial", 16))

    def latent_channels(self) -> int:
        return int(self.pipe.num_channels_latents)

    def timestep_dtype(self, prep: Prepared) -> torch.dtype:
        # the HunyuanVideo-1.5 pipelines keep latents in the transformer dtype and cast the timestep to it
        return prep.dtype

    def _encode(self, args, device, batch, negative: bool):
        pipe = self.pipe
        prefix = "negative_" if negative else ""
        embeds, mask, embeds2, mask2 = pipe.encode_prompt(
            prompt=args[prefix + "prompt"], device=device, dtype=pipe.transformer.dtype, batch_size=batch,
            num_videos_per_prompt=args["num_videos_per_prompt"], prompt_embeds=args[prefix + "prompt_embeds"],
            prompt_embeds_mask=args[prefix + "prompt_embeds_mask"], prompt_embeds_2=args[prefix + "prompt_embeds_2"],
            prompt_embeds_mask_2=args[prefix + "prompt_embeds_mask_2"])
        lengths = prefix_lengths(prefix + "prompt_embeds_mask", mask)
        lengths2 = prefix_lengths(prefix + "prompt_embeds_mask_2", mask2)
        return embeds, mask, embeds2, mask2, lengths, lengths2

    _TEXT_ARGS = ("prompt", "negative_prompt", "prompt_embeds", "negative_prompt_embeds", "prompt_embeds_mask",
                  "negative_prompt_embeds_mask", "prompt_embeds_2", "prompt_embeds_mask_2", "negative_prompt_embeds_2",
                  "negative_prompt_embeds_mask_2")

    def check_inputs_and_size(self, args: Dict[str, Any]) -> Tuple[int, int]:
        """The pipeline's own input checks; returns the pixel (height, width) the pipeline would use."""
        pipe = self.pipe
        pipe.check_inputs(height=args["height"], width=args["width"], **{k: args[k] for k in self._TEXT_ARGS})
        height, width = args["height"], args["width"]
        if height is None and width is None:
            height, width = pipe.video_processor.calculate_default_height_width(
                pipe.default_aspect_ratio[1], pipe.default_aspect_ratio[0], pipe.target_size)
        return height, width

    def prepare(self, args: Dict[str, Any], config) -> Prepared:
        pipe = self.pipe
        height, width = self.check_inputs_and_size(args)
        height, width, num_frames = self.check_geometry(height, width, args["num_frames"], config.round_num_frames)
        pipe._attention_kwargs = args["attention_kwargs"]
        pipe._current_timestep = None
        pipe._interrupt = False
        device = pipe._execution_device
        prompt = args["prompt"]
        prompt_batch = 1 if isinstance(prompt, str) else (len(prompt) if prompt is not None
                                                          else args["prompt_embeds"].shape[0])
        batch = prompt_batch * int(args["num_videos_per_prompt"])
        dtype = pipe.transformer.dtype
        image_tokens = int(pipe.vision_num_semantic_tokens)
        image_embeds = self.image_embeds(args, batch, device, dtype)
        image_valid = self.image_tokens_valid(image_tokens)
        conds = [self._encode(args, device, prompt_batch, negative=False)]
        if pipe.guider._enabled and pipe.guider.num_conditions > 1:
            conds.append(self._encode(args, device, prompt_batch, negative=True))
        names = ("cond", "uncond")
        conditions = []
        for name, (embeds, mask, embeds2, mask2, lengths, lengths2) in zip(names, conds):
            kwargs = dict(encoder_hidden_states=embeds, encoder_attention_mask=mask, encoder_hidden_states_2=embeds2,
                          encoder_attention_mask_2=mask2, image_embeds=image_embeds,
                          attention_kwargs=args["attention_kwargs"], return_dict=False)
            parts = [(image_valid, n2, n1) for n1, n2 in zip(lengths, lengths2)]
            conditions.append(Condition(name, kwargs, [sum(p) for p in parts],
                                        image_tokens + embeds.shape[1] + embeds2.shape[1], {"text_parts": parts}))
        return Prepared(batch=batch, height=height, width=width, num_frames=num_frames,
                        num_steps=int(args["num_inference_steps"]), device=device, dtype=dtype,
                        latent_channels=self.latent_channels(), conditions=conditions, guidance=None,
                        generator=args["generator"], latents=args["latents"], output_type=args["output_type"],
                        return_dict=args["return_dict"], callback=None, callback_inputs=[], sigmas=args["sigmas"],
                        extra=self.extra(args, batch, device, dtype, height, width, num_frames))

    # T2V specifics, overridden by the I2V adapter
    def image_embeds(self, args, batch, device, dtype):
        return torch.zeros(batch, self.pipe.vision_num_semantic_tokens, self.pipe.vision_states_dim, dtype=dtype,
                           device=device)

    def image_tokens_valid(self, image_tokens: int) -> int:
        return 0  # T2V: the transformer masks all image tokens (its `is_t2v` switch on all-zero image_embeds)

    def extra(self, args, batch, device, dtype, height, width, num_frames) -> Dict[str, Any]:
        return {}

    def guided_velocity(self, prep: Prepared, step: int, timestep, run_condition) -> torch.Tensor:
        """Runs the model once per guider batch (as the pipeline does) and combines with `pipe.guider`.

        run_condition(condition, guider_batch_name) -> velocity for that condition.
        """
        guider = self.pipe.guider
        by_mask = {id(c.kwargs["encoder_attention_mask"]): c for c in prep.conditions}
        guider_inputs = {
            "encoder_hidden_states": tuple(c.kwargs["encoder_hidden_states"] for c in prep.conditions) + (None,) * (2 - len(prep.conditions)),
            "encoder_attention_mask": tuple(c.kwargs["encoder_attention_mask"] for c in prep.conditions) + (None,) * (2 - len(prep.conditions)),
        }
        guider.set_state(step=step, num_inference_steps=prep.num_steps, timestep=timestep)
        guider_state = guider.prepare_inputs(guider_inputs)
        predictions = []
        for batch in guider_state:
            guider.prepare_models(self.pipe.transformer)
            condition = by_mask[id(getattr(batch, "encoder_attention_mask"))]
            predictions.append(run_condition(condition, getattr(batch, guider._identifier_key)))
            guider.cleanup_models(self.pipe.transformer)
        if isinstance(predictions[0], torch.Tensor):
            for batch, prediction in zip(guider_state, predictions):
                batch.noise_pred = prediction
            return guider(guider_state)[0]
        # per-sample predictions of different shapes (the packed forward): guide each sample on its own
        # (classifier-free guidance is elementwise, so this equals guiding the batch)
        out = []
        for b in range(len(predictions[0])):
            for batch, prediction in zip(guider_state, predictions):
                batch.noise_pred = prediction[b]
            out.append(guider(guider_state)[0])
        return out

    def model_input(self, prep: Prepared, latents: torch.Tensor, stage_axes, sample_indices) -> torch.Tensor:
        latents = latents.to(prep.dtype)
        batch, channels, frames, height, width = latents.shape
        cond = torch.zeros_like(latents)
        mask = torch.zeros(batch, 1, frames, height, width, dtype=prep.dtype, device=latents.device)
        return torch.cat([latents, cond, mask], dim=1)

    def prepare_noise(self, prep: Prepared, shape, generator, latents=None, stage_axes=None) -> torch.Tensor:
        t, h, w = shape
        noise = self.pipe.prepare_latents(prep.batch, prep.latent_channels, h * self.spatial_factor,
                                          w * self.spatial_factor, (t - 1) * 4 + 1, prep.dtype, prep.device,
                                          generator, latents)
        return noise

    def output(self, prep: Prepared, video):
        from diffusers.pipelines.hunyuan_video1_5.pipeline_output import HunyuanVideo15PipelineOutput
        if not prep.return_dict:
            return (video,)
        return HunyuanVideo15PipelineOutput(frames=video)


class HunyuanVideo15I2VAdapter(HunyuanVideo15Adapter):
    """HunyuanVideo15ImageToVideoPipeline: the image latent (encoded once at full resolution) is sub-sampled on
    each stage's nested (h, w) axes and placed on latent frame 0 with a mask channel, as the reference does;
    the 729 SigLIP image tokens are attended.

    `image`: one PIL image for every prompt (the pipeline's own input), or — the compiled pipeline only; the
    pipeline's check refuses anything but one PIL image — a list of one PIL image per prompt. The images of a
    list must give the same video size (the pipeline derives it from the image); image i conditions the
    videos of prompt i (prompt-major, as the prompt embeddings are repeated per video)."""

    pipeline_class = "HunyuanVideo15ImageToVideoPipeline"

    def check_inputs_and_size(self, args: Dict[str, Any]) -> Tuple[int, int]:
        import PIL.Image
        pipe = self.pipe
        image = args["image"]
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        prompts = _prompt_count(args, "")
        if len(images) not in (1, prompts):
            raise ValueError(f"image=<{len(images)} images> is invalid for {prompts} prompts; allowed: one image (used "
                             f"for every prompt) or a list of {prompts} images, one per prompt")
        if isinstance(image, (list, tuple)):
            for i, item in enumerate(images):
                if not isinstance(item, PIL.Image.Image):
                    _checks.fail(f"image[{i}]", item, "a PIL.Image.Image (one per prompt)", TypeError)
        # the pipeline's own checks (its image check accepts one PIL image: each list entry passed that above)
        pipe.check_inputs(image=images[0], **{k: args[k] for k in self._TEXT_ARGS})
        sizes = [pipe.video_processor.calculate_default_height_width(height=img.size[1], width=img.size[0],
                                                                     target_size=pipe.target_size) for img in images]
        for i, size in enumerate(sizes):
            if size != sizes[0]:
                _checks.fail(f"image[{i}]", images[i], f"an image whose video size (height, width) is {sizes[0]} like "
                             f"image[0]'s, since the batch shares one latent grid (image[{i}] of "
                             f"{images[i].size[0]}x{images[i].size[1]} px gives {size})")
        height, width = sizes[0]
        self._images = [pipe.video_processor.resize(img, height=height, width=width, resize_mode="crop")
                        for img in images]
        return height, width

    def image_embeds(self, args, batch, device, dtype):
        # one encode per input image, repeated for its prompt's videos (one image: for the whole batch)
        repeats = batch // len(self._images)
        return torch.cat([self.pipe.encode_image(image=img, batch_size=repeats, device=device, dtype=dtype)
                          for img in self._images], dim=0)

    def image_tokens_valid(self, image_tokens: int) -> int:
        return image_tokens

    def extra(self, args, batch, device, dtype, height, width, num_frames) -> Dict[str, Any]:
        pipe = self.pipe
        # (1, C, 1, H, W) for one image (broadcast over the batch), else (B, C, 1, H, W): image i for the videos
        # of prompt i. The pipeline encodes with batch 1 (a batched encode may round differently): so do we.
        latents = torch.cat([pipe._get_image_latents(vae=pipe.vae, image_processor=pipe.video_processor, image=img,
                                                     height=height, width=width, device=device)
                             for img in self._images], dim=0)
        if latents.shape[0] > 1:
            latents = latents.repeat_interleave(batch // latents.shape[0], dim=0)
        return {"image_latents": latents.to(device=device, dtype=dtype), "condition_cache": {}}

    def model_input(self, prep: Prepared, latents: torch.Tensor, stage_axes, sample_indices) -> torch.Tensor:
        latents = latents.to(prep.dtype)
        batch, channels, frames, height, width = latents.shape
        cache = prep.extra["condition_cache"]
        # The reference caches the sub-sampled condition by (h, w) only, filling it before planning with the
        # initial plan's axes (its quirk Q12); keyed the same way here, so stage 0 keeps those axes.
        key = (height, width)
        if key not in cache:
            full = prep.extra["image_latents"]
            if stage_axes is None:
                cache[key] = full
            else:
                rows = torch.tensor(list(stage_axes[1]), device=full.device)
                cols = torch.tensor(list(stage_axes[2]), device=full.device)
                cache[key] = full.index_select(3, rows).index_select(4, cols)
        image = cache[key]
        if image.shape[0] > 1:
            # one image per prompt: this group's samples, cached per stage grid (a per-step index tensor would
            # be a host->device copy inside the step loop)
            indices = tuple(range(batch)) if sample_indices is None else tuple(sample_indices)
            if (key, indices) not in cache:
                cache[key, indices] = image.index_select(0, torch.tensor(indices).to(image.device))
            image = cache[key, indices]
        cond = torch.zeros_like(latents)
        cond[:, :, :1] = image.expand(batch, -1, -1, -1, -1)
        mask = torch.zeros(batch, 1, frames, height, width, dtype=prep.dtype, device=latents.device)
        mask[:, :, 0] = 1.0
        return torch.cat([latents, cond, mask], dim=1)


ADAPTERS = {
    "HunyuanVideoImageToVideoPipeline": HunyuanVideoI2VAdapter,
    "HunyuanVideo15ImageToVideoPipeline": HunyuanVideo15I2VAdapter,
    "HunyuanVideoPipeline": HunyuanVideoAdapter,
    "HunyuanVideo15Pipeline": HunyuanVideo15Adapter,
}


def original_class(pipe) -> type:
    """The pipeline's own class (not our per-instance DVG subclass)."""
    cls = type(pipe)
    return getattr(cls, "_dvg_original_class", cls)


def adapter_for(pipe) -> Adapter:
    cls = original_class(pipe)
    for klass in cls.__mro__:
        if klass.__name__ in ADAPTERS:
            return ADAPTERS[klass.__name__](pipe)
        if klass.__name__ in SUPPORTED_PIPELINES:
            raise NotImplementedError(
                f"{klass.__name__} is a supported pipeline family but its DVG adapter is not available in this "
                f"build; available: {', '.join(sorted(ADAPTERS))}")
    raise TypeError(f"compile_pipeline: pipe={cls.__name__} is not supported; supported pipelines: "
                    f"{', '.join(SUPPORTED_PIPELINES)}")
