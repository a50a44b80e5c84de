"""HunyuanVideo image-to-video through its real prompt path: the tiny Llava text encoder of `dvg_engine.tiny`
(the image goes through the vision tower into the prompt embeddings), the CLIP text encoder and the CLIP image
processor, uncompiled, compiled with DVG, and after a save_pretrained -> from_pretrained round trip."""
import pytest
import torch

import _tiny_pipes as tp
from _tolerances import assert_verbose_allclose

from dvg_engine import planner, processors, tiny
from dvg_engine.engine import compile_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = tp.STEPS
ATTN_ATOL = 2e-4
MODES = ("latent_concat", "token_replace")
INTERLEAVE = {"latent_concat": 2, "token_replace": 4}  # the pipeline's defaults per mode
PROMPT = "a horse galloping across a field"


def _template():
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE
    return DEFAULT_PROMPT_TEMPLATE


@pytest.fixture(scope="module")
def pipes():
    out = {mode: tp.hv_i2v_text_pipe(mode) for mode in MODES}
    yield out
    for pipe in out.values():
        if "dvg" in pipe.__dict__:
            pipe.dvg.restore()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def call_args(**kw):
    args = dict(image=tp.test_image(), prompt=PROMPT, height=tp.HEIGHT, width=tp.WIDTH, num_frames=tp.FRAMES,
                num_inference_steps=STEPS, output_type="latent")
    args.update(kw)
    return args


# ---- tokenizer and prompt encoding ----------------------------------------------------------------------------

def test_llava_tokenizer_fits_the_i2v_template():
    """The pipeline crops `crop_start` template tokens and expands the single image token at `image_emb_start`
    into `image_emb_len` rows; a tokenizer that disagreed would silently keep template text or cut the prompt."""
    template = _template()
    tok = tiny.build_llava_tokenizer()
    prompt = "A horse galloping,\n3 zebras & a Quokka!"
    ids = tok(template["template"].format(prompt)).input_ids
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens.index(tiny.LLAVA_IMAGE_TOKEN) == template["image_emb_start"]
    assert tokens.count(tiny.LLAVA_IMAGE_TOKEN) == 1 and tok.unk_token not in tokens
    assert tokens.count("<|end_header_id|>") == 3  # system, user, assistant: the pipeline's assistant crop needs 3
    # the prompt spans [crop_start, the assistant's <|eot_id|>), the 4 tokens the pipeline removes before the reply
    last_header = len(tokens) - 1 - tokens[::-1].index("<|end_header_id|>")
    prompt_ids = ids[template["crop_start"]:last_header + 1 - 4]
    assert tok.decode(prompt_ids).replace(" ", "") == prompt.replace(" ", "")
    assert tokens[last_header + 1 - 4] == "<|eot_id|>"
    assert len(tok(template["template"].split("{}")[0]).input_ids) == template["crop_start"]


@pytest.mark.parametrize("mode", MODES)
def test_encode_prompt_matches_a_direct_llava_forward(pipes, mode):
    """pipe.encode_prompt (template, image-token expansion, crop, interleave) on the tiny Llava equals the text
    encoder run directly on the unpadded template with the image token repeated image_emb_len times: image
    rows = its image positions every `interleave`-th, then the prompt's rows and the reply's leading "\\n\\n"."""
    pipe, template = pipes[mode], _template()
    step, n_image = INTERLEAVE[mode], template["image_emb_len"]
    image = tp.test_image()
    embeds, pooled, mask = pipe.encode_prompt(image=image, prompt=PROMPT, image_embed_interleave=step,
                                              device=torch.device("cpu"))
    tok = pipe.tokenizer
    ids = tok(template["template"].format(PROMPT)).input_ids
    start = template["image_emb_start"]
    expanded = ids[:start] + ids[start:start + 1] * n_image + ids[start + 1:]
    pixels = pipe.image_processor(image, return_tensors="pt").pixel_values
    assert pixels.shape[-2:] == (tiny.LLAVA_IMAGE_SIZE, tiny.LLAVA_IMAGE_SIZE)
    with torch.no_grad():
        hidden = pipe.text_encoder(input_ids=torch.tensor([expanded]), pixel_values=pixels,
                                   output_hidden_states=True).hidden_states[-3][0]
    n_prompt = len(tok(PROMPT, add_special_tokens=False).input_ids)
    text_start = template["crop_start"] + n_image - 1  # where the prompt lands once the image token is expanded
    expected = torch.cat([hidden[start:start + n_image:step], hidden[text_start:text_start + n_prompt], hidden[-1:]])
    valid = n_image // step + n_prompt + 1
    assert embeds.shape == (1, n_image // step + 256 - 4, tiny.TINY_HUNYUAN_VIDEO["text_hidden_size"])
    assert mask[0, :valid].all() and not mask[0, valid:].any()  # a prefix mask, as the engine requires
    # padded batch vs unpadded direct run: same tokens and positions, different reduction lengths
    assert_verbose_allclose(embeds[0, :valid], expected, atol=1e-5, rtol=1e-5, name="encode_prompt vs direct Llava")
    assert pooled.shape == (1, tiny.TINY_HUNYUAN_VIDEO["clip_hidden_size"])

    other, _, _ = pipe.encode_prompt(image=tp.test_image(seed=9).transpose(0), prompt=PROMPT,
                                     image_embed_interleave=step, device=torch.device("cpu"))
    n_rows = n_image // step
    # the image reaches the image rows and, through causal attention, the prompt rows after them
    assert not torch.allclose(other[0, :n_rows], embeds[0, :n_rows])
    assert not torch.allclose(other[0, n_rows:valid], embeds[0, n_rows:valid])


def test_builder_rejects_unknown_condition_type():
    with pytest.raises(ValueError, match=r"image_condition_type.*'nope'.*latent_concat"):
        tiny.tiny_hunyuan_video_i2v_pipeline(image_condition_type="nope")


# ---- generation ------------------------------------------------------------------------------------------------

def _image_latent(pipe, image):
    """The full-resolution image latent (1, C, H, W), computed independently of the engine."""
    pixels = pipe.video_processor.preprocess(image, tp.HEIGHT, tp.WIDTH).to(pipe.vae.dtype).unsqueeze(2)
    with torch.no_grad():
        return (pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae_scaling_factor)[:, :, 0].float()


@pytest.mark.parametrize("mode", MODES)
def test_prompt_and_image_generate_with_dvg_keeping_frame0(pipes, mode, monkeypatch):
    pipe = pipes[mode]
    channels = 4
    ref = pipe(**call_args(), generator=gen()).frames
    assert ref.shape == ((1, channels, 8, 16, 24) if mode == "latent_concat" else (1, channels, 9, 16, 24))

    compile_pipeline(pipe, budget=0.5)
    calls, layouts = [], []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, args, kw: calls.append(kw["hidden_states"].clone()), with_kwargs=True)
    original = processors.packed_attention
    monkeypatch.setattr(processors, "packed_attention",
                        lambda q, k, v, layout: layouts.append(layout) or original(q, k, v, layout))
    try:
        out = pipe(**call_args(), generator=gen()).frames
    finally:
        hook.remove()
        report = pipe.dvg.last_report
        pipe.dvg.restore()
    assert out.shape == ref.shape and torch.isfinite(out).all()
    sample = report["samples"][0]
    shapes = [tuple(s) for s in sample["stage_shapes"]]
    assert len(set(shapes)) == 4 and shapes[-1] == (9, 16, 24) and 0 < sample["token_step_ratio"] < 1
    per_step = [k for k, n in enumerate(report["executed_model_calls"]) for _ in range(n)]
    assert len(calls) == len(per_step) == STEPS

    # Frame 0 of every call holds the image latent sub-sampled on the stage's nested (h, w) axes. Stage 0 runs
    # before planning, so it uses the initial plan's axes (the reference's quirk Q12).
    initial = planner.initial_plan(planner.FullGrid.from_dict(report["grid"]), STEPS, 0.5)
    axes = [initial.stage_axes[0]] + [tuple(a) for a in sample["stage_axes"][1:]]
    image_latent = _image_latent(pipe, tp.test_image())
    assert image_latent.abs().sum() > 0
    for hidden, k in zip(calls, per_step):
        assert tuple(hidden.shape[2:]) == shapes[k]
        expected = image_latent.index_select(2, torch.tensor(axes[k][1])).index_select(3, torch.tensor(axes[k][2]))
        if mode == "latent_concat":
            assert_verbose_allclose(hidden[:, channels:2 * channels, 0], expected, atol=1e-6, rtol=0,
                                    name="cond frame 0")
            assert not hidden[:, channels:2 * channels, 1:].any()
            assert (hidden[:, 2 * channels, 0] == 1).all() and not hidden[:, 2 * channels, 1:].any()
        else:
            assert_verbose_allclose(hidden[:, :, 0], expected, atol=1e-6, rtol=0, name="replaced frame 0")
    if mode == "token_replace":
        assert torch.equal(out[:, :, 0], calls[-1][:, :, 0])  # frame 0 stays pinned to the image latent

    # The encoder's real mask reached the attention: each segment is the stage's latent tokens plus the valid
    # text tokens (image rows + prompt + "\n\n"); the padding up to the pipeline's 256 text tokens is skipped.
    n_prompt = len(pipe.tokenizer(PROMPT, add_special_tokens=False).input_ids)
    n_text = _template()["image_emb_len"] // INTERLEAVE[mode] + n_prompt + 1
    text_len = _template()["image_emb_len"] // INTERLEAVE[mode] + 256 - 4
    layers = pipe.transformer.config.num_layers + pipe.transformer.config.num_single_layers
    assert len(layouts) == layers * STEPS
    for layout, k in zip(layouts[::layers], per_step):
        t, h, w = shapes[k]
        assert layout.segment_lengths == [t * (h // 2) * (w // 2) + n_text]
        assert layout.seq_len == t * (h // 2) * (w // 2) + text_len


@pytest.mark.parametrize("mode", MODES)
def test_enabled_false_matches_uncompiled_with_real_encoders(pipes, mode):
    pipe = pipes[mode]
    args = call_args(num_inference_steps=4)
    ref = pipe(**args, generator=gen()).frames
    compile_pipeline(pipe, enabled=False)
    try:
        out = pipe(**args, generator=gen()).frames
    finally:
        pipe.dvg.restore()
    assert_verbose_allclose(out, ref, atol=ATTN_ATOL, rtol=1e-4, name=f"{mode} enabled=False vs uncompiled")


def test_two_prompts_with_one_image_each_match_single_runs(pipes):
    """A batch of two prompts (one image per prompt, as the pipeline's Llava needs) with forced different plans:
    packed into one varlen stream, each video equals its prompt run alone."""
    pipe = pipes["latent_concat"]
    demands = [{"spatial_demand": 1.0, "temporal_demand": 0.0}, {"spatial_demand": 0.0, "temporal_demand": 1.0}]
    prompts = [PROMPT, "a quiet lake"]
    compile_pipeline(pipe, budget=0.5, plan=demands)
    try:
        both = pipe(**call_args(prompt=prompts, image=[tp.test_image()] * 2), generator=[gen(0), gen(1)]).frames
        shapes = [s["stage_shapes"] for s in pipe.dvg.last_report["samples"]]
        assert shapes[0] != shapes[1]
        for b in range(2):
            compile_pipeline(pipe, plan=[demands[b]])
            alone = pipe(**call_args(prompt=prompts[b]), generator=[gen(b)]).frames
            assert_verbose_allclose(both[b:b + 1], alone, atol=ATTN_ATOL, rtol=1e-4, name=f"HV I2V prompt {b}")
    finally:
        pipe.dvg.restore()


@pytest.mark.parametrize("mode", MODES)
def test_save_pretrained_round_trip_then_compile(pipes, mode, tmp_path):
    from diffusers import DiffusionPipeline, HunyuanVideoImageToVideoPipeline
    from transformers import LlavaForConditionalGeneration
    pipe = pipes[mode]
    pipe.save_pretrained(str(tmp_path), safe_serialization=True)
    loaded = DiffusionPipeline.from_pretrained(str(tmp_path))
    assert type(loaded) is HunyuanVideoImageToVideoPipeline
    assert isinstance(loaded.text_encoder, LlavaForConditionalGeneration)
    assert loaded.transformer.config.image_condition_type == mode
    image_token = loaded.tokenizer.convert_tokens_to_ids(tiny.LLAVA_IMAGE_TOKEN)
    assert loaded.text_encoder.config.image_token_index == image_token
    loaded.set_progress_bar_config(disable=True)
    compile_pipeline(loaded, budget=0.5)
    compile_pipeline(pipe, budget=0.5)
    try:
        out = loaded(**call_args(), generator=gen()).frames
        ref = pipe(**call_args(), generator=gen()).frames
        ref_shapes = pipe.dvg.last_report["samples"][0]["stage_shapes"]
    finally:
        pipe.dvg.restore()
    assert loaded.dvg.last_report["samples"][0]["stage_shapes"] == ref_shapes
    # Same weights, but a reloaded model's matmuls may take other SIMD paths (measured: 7e-7 apart even
    # uncompiled), so not bit-identical.
    assert_verbose_allclose(out, ref, atol=1e-5, rtol=1e-5, name=f"{mode} reloaded vs in-memory, compiled")


@pytest.mark.parametrize("mode", MODES)
def test_true_cfg_with_black_image_negative_matches_uncompiled(pipes, mode):
    """True CFG encodes the negative prompt with a black image and the default interleave (2) even in
    token_replace mode, so cond and uncond text lengths differ (144 vs 288 image rows there)."""
    pipe = pipes[mode]
    args = call_args(num_inference_steps=4, negative_prompt="blurry, low quality", true_cfg_scale=3.0)
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: calls.append(kw["encoder_hidden_states"].shape[1]), with_kwargs=True)
    try:
        ref = pipe(**args, generator=gen()).frames
        compile_pipeline(pipe, enabled=False)
        out = pipe(**args, generator=gen()).frames
    finally:
        hook.remove()
        pipe.dvg.restore()
    n_image = _template()["image_emb_len"]
    assert set(calls) == {n_image // INTERLEAVE[mode] + 252, n_image // 2 + 252} and len(calls) == 2 * 2 * 4
    assert_verbose_allclose(out, ref, atol=ATTN_ATOL, rtol=1e-4, name=f"{mode} true CFG enabled=False vs uncompiled")


def test_builder_is_deterministic_and_restores_global_rng():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = tp.hv_i2v_text_pipe(seed=5)
    assert torch.equal(torch.rand(3), expected_next)  # building did not consume the caller's RNG
    b, c = tp.hv_i2v_text_pipe(seed=5), tp.hv_i2v_text_pipe(seed=6)
    for name in ("text_encoder", "text_encoder_2", "transformer", "vae"):
        sa, sb, sc = (getattr(p, name).state_dict() for p in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
        assert any(not torch.equal(sa[k], sc[k]) for k in sa), name
