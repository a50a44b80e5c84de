"""Embedded tiny pipelines: real diffusers HunyuanVideo classes built from small configs with
random (seeded) weights, so the demo, the CLI tests and the engine tests run with nothing downloaded.

What is tiny and what is not:
- the transformer is the real `HunyuanVideoTransformer3DModel` (patch 1×2×2, the real RoPE split
  scaled to the head dim, head dim 64 by default so every kernel path is exercised);
- the text encoders are a `LlamaModel` and a `CLIPTextModel` from small configs; HunyuanVideo I2V's is a
  `LlavaForConditionalGeneration` (tiny Llama + tiny CLIP vision tower giving the template's 576 image
  tokens) with a `CLIPImageProcessor`, so the pipeline's own image-in-prompt encoding runs;
- the tokenizers are built locally with the `tokenizers` library (no vocabulary file, no download):
  a WordPiece model whose vocabulary holds the words of the pipeline's prompt template, a short list
  of common words, and every printable ASCII character as a stand-alone piece and a `##`
  continuation piece, so any plain prompt string tokenises without unknown tokens. The Llama-side
  tokenizer splits the HunyuanVideo prompt template into exactly `crop_start` (= 95) tokens, as the
  real Llama-3 tokenizer does, so the pipeline's crop removes the template and keeps the prompt (the
  I2V one: `crop_start` = 103 with `<image>` at token 5);
- the VAE is the real `AutoencoderKLHunyuanVideo` (8× spatial, 4× causal temporal) with few channels.

Everything round-trips through `save_pretrained` / `DiffusionPipeline.from_pretrained` on a local
folder, which is how `dvg generate --model PATH` is tested.
"""
from __future__ import annotations

import re
import string
from typing import Dict, Tuple

import torch

from ._checks import check_choice, check_int

__all__ = [
    "TINY_HUNYUAN_VIDEO",
    "build_llama_tokenizer",
    "build_clip_tokenizer",
    "tiny_hunyuan_video_pipeline",
    "build_llava_tokenizer",
    "tiny_hunyuan_video_i2v_pipeline",
    "build_qwen_tokenizer",
    "tiny_hunyuan_video15_pipeline",
    "build_tiny_pipeline",
    "save_tiny_pipeline",
]

# Default sizes of the embedded HunyuanVideo: attention-dominated at demo resolutions (4 heads × 64),
# yet a full 20-step generation of two 33-frame 256×256 videos takes seconds on 2 CPU cores.
TINY_HUNYUAN_VIDEO: Dict[str, int] = {
    "num_attention_heads": 4,
    "attention_head_dim": 64,
    "num_layers": 2,
    "num_single_layers": 2,
    "num_refiner_layers": 1,
    "latent_channels": 4,
    "text_hidden_size": 32,
    "clip_hidden_size": 32,
}

# Llama-3 special tokens as spelt in the HunyuanVideo prompt template.
_LLAMA_SPECIALS = ("<pad>", "<unk>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
_CLIP_SPECIALS = ("<|endoftext|>", "<unk>", "<|startoftext|>")

# A few hundred common words keep typical prompts readable as whole-word tokens; anything else falls
# back to characters, never to the unknown token.
_COMMON_WORDS = """
a an the and or of in on at to with from by for over under into through across along near far above below
is are was were be being been it its this that these those there here while as
cat dog horse bird fish cow sheep lion tiger bear fox wolf deer rabbit person man woman child people
car boat train plane bicycle ship road street city town village house building bridge tower castle
tree trees forest flower flowers grass field meadow garden mountain mountains hill hills valley river
lake sea ocean beach wave waves sand desert snow rain storm cloud clouds sky sun moon star stars night
day morning evening sunset sunrise light dark shadow fire smoke water ice wind
red orange yellow green blue purple pink brown black white gray grey golden silver
big small large tiny tall short long wide old young new fast slow bright dim warm cold calm wild
running walking flying swimming jumping dancing galloping driving floating falling rising spinning
moving standing sitting sleeping eating playing rolling drifting crashing flowing glowing
camera close up wide shot aerial view slow motion pan zoom tracking cinematic realistic
photo video scene style detailed high quality beautiful dramatic colorful soft sharp
""".split()


def _wordpiece_tokenizer(specials, template_words, *, lowercase: bool, keep_space_before_digit: bool,
                         post_single: str, post_specials, keep_newline: bool = False):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab: Dict[str, int] = {}
    for token in specials:
        vocab.setdefault(token, len(vocab))
    vocab.setdefault("\n\n", len(vocab))
    vocab.setdefault(" ", len(vocab))
    if keep_newline:
        # In the vocabulary, not an added token: an added "\n" would be matched before pre-tokenisation and
        # split every "\n\n" into two tokens.
        vocab.setdefault("\n", len(vocab))
    for char in string.printable.strip():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault("##" + char, len(vocab))
    for word in list(template_words) + _COMMON_WORDS:
        vocab.setdefault(word.lower() if lowercase else word, len(vocab))

    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=200))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    # Whitespace separates words and is dropped, except (Llama side) a space before a digit, which the
    # Llama-3 tokenizer keeps as its own token: that is what makes the template prefix 95 tokens long.
    # "\n\n" stays one token, as in Llama-3.
    # With keep_newline a lone "\n" is a token too, as in Llama-3 (the I2V template has one after "<image>").
    if keep_newline:
        drop, keep = r"[ \t]+(?!\d)", r"\n\n|\n|\w+|[^\w\s]|[ \t]+"
    elif keep_space_before_digit:
        drop, keep = r"[ \t]+(?!\d)|(?<!\n)\n(?!\n)", r"\n\n|\w+|[^\w\s]|[ \t]+"
    else:
        drop, keep = r"\s+", r"\w+|[^\w\s]"
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(drop), behavior="removed"),
        pre_tokenizers.Split(Regex(keep), behavior="isolated"),
    ])
    tok.add_special_tokens(list(specials))
    tok.post_processor = processors.TemplateProcessing(
        single=post_single, special_tokens=[(name, vocab[name]) for name in post_specials])
    tok.decoder = decoders.WordPiece()
    return tok


def build_llama_tokenizer():
    """A fast tokenizer standing in for HunyuanVideo's Llama-3 tokenizer (built locally, no files).

    Returns a `transformers.PreTrainedTokenizerFast` with `<pad>` padding on the right (so text masks
    are prefix masks, as the pipeline assumes), a `<|begin_of_text|>` prefix, and a vocabulary under 400.
    """
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
    from transformers import PreTrainedTokenizerFast

    template = DEFAULT_PROMPT_TEMPLATE["template"].replace("{}", " ")
    words = re.findall(r"\w+", template)
    tok = _wordpiece_tokenizer(_LLAMA_SPECIALS, words, lowercase=False, keep_space_before_digit=True,
                               post_single="<|begin_of_text|> $A", post_specials=["<|begin_of_text|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", padding_side="right",
                                   model_max_length=1024)


def build_clip_tokenizer():
    """A fast tokenizer standing in for CLIP's (lower-cased, `<|startoftext|> … <|endoftext|>`).

    The end token is appended to every sequence and is also the pad token, so `CLIPTextModel`'s pooled
    output (taken at the first end token) is well defined for every prompt.
    """
    from transformers import PreTrainedTokenizerFast

    tok = _wordpiece_tokenizer(_CLIP_SPECIALS, [], lowercase=True, keep_space_before_digit=False,
                               post_single="<|startoftext|> $A <|endoftext|>",
                               post_specials=["<|startoftext|>", "<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", unk_token="<unk>",
                                   bos_token="<|startoftext|>", eos_token="<|endoftext|>", padding_side="right",
                                   model_max_length=77)


def _rope_axes_dim(head_dim: int) -> Tuple[int, int, int]:
    # HunyuanVideo splits the head dim 16/56/56 (t/h/w) at 128; keep the temporal share at 1/8 and split
    # the rest evenly. Each part must be even for the rotary pairs.
    t = max(2, (head_dim // 8) // 2 * 2)
    rest = head_dim - t
    h = rest // 2 // 2 * 2
    return (t, h, rest - h)


def _check_hv_sizes(seed, num_attention_heads, attention_head_dim, num_layers, num_single_layers, num_refiner_layers,
                    latent_channels, vae_channels, dtype) -> None:
    check_int("seed", seed)
    for name, value in (("num_attention_heads", num_attention_heads), ("num_layers", num_layers),
                        ("num_single_layers", num_single_layers), ("num_refiner_layers", num_refiner_layers),
                        ("latent_channels", latent_channels), ("vae_channels", vae_channels)):
        check_int(name, value, minimum=1)
    check_int("attention_head_dim", attention_head_dim, minimum=8)
    if attention_head_dim % 2:
        raise ValueError(f"attention_head_dim={attention_head_dim} is odd; allowed: an even integer >= 8 "
                         f"(rotary embeddings rotate pairs of channels)")
    check_choice("dtype", dtype, (torch.float32, torch.float16, torch.bfloat16))
    if vae_channels % 4:
        raise ValueError(f"vae_channels={vae_channels} is not a multiple of 4; allowed: multiples of 4 "
                         f"(the VAE's group norm uses 4 groups)")


def _hv_clip_transformer_vae(tokenizer_2, *, in_channels, latent_channels, image_condition_type, num_attention_heads,
                             attention_head_dim, num_layers, num_single_layers, num_refiner_layers, vae_channels):
    """The parts HunyuanVideo T2V and I2V share, drawn from the caller's RNG in a fixed order (CLIP text
    encoder, transformer, VAE) so a builder's weights depend only on its seed."""
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_hidden = TINY_HUNYUAN_VIDEO["text_hidden_size"]
    clip_hidden = TINY_HUNYUAN_VIDEO["clip_hidden_size"]
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer_2), hidden_size=clip_hidden, intermediate_size=2 * clip_hidden,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77, projection_dim=clip_hidden,
        pad_token_id=tokenizer_2.pad_token_id, bos_token_id=tokenizer_2.bos_token_id,
        eos_token_id=tokenizer_2.eos_token_id))
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=in_channels, out_channels=latent_channels, num_attention_heads=num_attention_heads,
        attention_head_dim=attention_head_dim, num_layers=num_layers, num_single_layers=num_single_layers,
        num_refiner_layers=num_refiner_layers, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
        qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=text_hidden,
        pooled_projection_dim=clip_hidden, rope_theta=256.0, rope_axes_dim=_rope_axes_dim(attention_head_dim),
        # T2V leaves it unset, so its saved config stays what it was before I2V shared this builder
        **({"image_condition_type": image_condition_type} if image_condition_type else {}))
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        block_out_channels=(vae_channels,) * 4, layers_per_block=1, norm_num_groups=4,
        spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=False)
    return text_encoder_2, transformer, vae


def _finish(pipe, modules, dtype):
    for module in modules:
        module.eval()
    if dtype != torch.float32:
        # the VAE stays float32: its group norms are unstable in half precision
        for module in modules:
            if module is not pipe.vae:
                module.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_hunyuan_video_pipeline(*, seed: int = 0, num_attention_heads: int = 4, attention_head_dim: int = 64,
                                num_layers: int = 2, num_single_layers: int = 2, num_refiner_layers: int = 1,
                                latent_channels: int = 4, vae_channels: int = 4, dtype: torch.dtype = torch.float32,
                                shift: float = 7.0):
    """A `HunyuanVideoPipeline` (text-to-video) with random weights, built from configs.

    seed: weights are drawn under `torch.manual_seed(seed)` (the global RNG state is restored after),
    so two calls with the same arguments give bit-identical pipelines.
    attention_head_dim: 64 or 128 are what the varlen attention kernels support; anything even ≥ 8 builds.
    Returns the pipeline on CPU in `dtype` (the VAE stays float32: its group norms are unstable in half).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
    from transformers import LlamaConfig, LlamaModel

    _check_hv_sizes(seed, num_attention_heads, attention_head_dim, num_layers, num_single_layers, num_refiner_layers,
                    latent_channels, vae_channels, dtype)
    tokenizer = build_llama_tokenizer()
    tokenizer_2 = build_clip_tokenizer()
    text_hidden = TINY_HUNYUAN_VIDEO["text_hidden_size"]

    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        text_encoder = LlamaModel(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=2 * text_hidden,
            # The pipeline reads hidden_states[-3] (it skips the last two layers), so three layers are the least.
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, rms_norm_eps=1e-6))
        text_encoder_2, transformer, vae = _hv_clip_transformer_vae(
            tokenizer_2, in_channels=latent_channels, latent_channels=latent_channels, image_condition_type=None,
            num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim, num_layers=num_layers,
            num_single_layers=num_single_layers, num_refiner_layers=num_refiner_layers, vae_channels=vae_channels)
    finally:
        torch.random.set_rng_state(rng_state)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)

    pipe = HunyuanVideoPipeline(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
                                scheduler=scheduler, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
    return _finish(pipe, (text_encoder, text_encoder_2, transformer, vae), dtype)


# --------------------------------------------------------------------------------------------------
# HunyuanVideo image-to-video (Llava text encoder)
# --------------------------------------------------------------------------------------------------

LLAVA_IMAGE_TOKEN = "<image>"
# Pixel size of the tiny CLIP vision tower: with patch 2 it gives 24 x 24 = 576 patch features, the
# `image_emb_len` of the pipeline's default template (the real tower: 336 px, patch 14).
LLAVA_IMAGE_SIZE = 48


def build_llava_tokenizer():
    """A fast tokenizer standing in for HunyuanVideo-I2V's Llava-Llama-3 tokenizer (built locally, no files).

    As `build_llama_tokenizer`, plus the special `<image>` token and a lone newline as its own token (as
    Llama-3 tokenises it). Checked at build time against the pipeline's default I2V template: the text
    before the prompt is exactly `crop_start` (= 103) tokens with one `<image>` at `image_emb_start` (= 5),
    which is what the pipeline's crop and image-token expansion assume.
    """
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE
    from transformers import PreTrainedTokenizerFast

    template = DEFAULT_PROMPT_TEMPLATE
    words = re.findall(r"\w+", template["template"].replace("{}", " "))
    tok = _wordpiece_tokenizer(_LLAMA_SPECIALS + (LLAVA_IMAGE_TOKEN,), words, lowercase=False,
                               keep_space_before_digit=True, keep_newline=True,
                               post_single="<|begin_of_text|> $A", post_specials=["<|begin_of_text|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", padding_side="right",
                                   model_max_length=1024)
    tokens = fast.convert_ids_to_tokens(fast(template["template"].split("{}")[0]).input_ids)
    image_at = [i for i, token in enumerate(tokens) if token == LLAVA_IMAGE_TOKEN]
    if len(tokens) != template["crop_start"] or image_at != [template["image_emb_start"]] or "<unk>" in tokens:
        raise RuntimeError(f"the tiny Llava tokenizer splits the I2V template prefix into {len(tokens)} tokens with "
                           f"{LLAVA_IMAGE_TOKEN} at {image_at}; the pipeline expects crop_start="
                           f"{template['crop_start']} and one {LLAVA_IMAGE_TOKEN} at {template['image_emb_start']}")
    return fast


def _clip_image_processor(size: int):
    try:  # transformers >= 5 without torchvision: name the PIL backend instead of getting it with a warning
        from transformers import CLIPImageProcessorPil as processor_class
    except ImportError:
        from transformers import CLIPImageProcessor as processor_class
    return processor_class(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def tiny_hunyuan_video_i2v_pipeline(*, seed: int = 0, image_condition_type: str = "latent_concat",
                                    num_attention_heads: int = 4, attention_head_dim: int = 64, num_layers: int = 2,
                                    num_single_layers: int = 2, num_refiner_layers: int = 1, latent_channels: int = 4,
                                    vae_channels: int = 4, dtype: torch.dtype = torch.float32, shift: float = 7.0):
    """A `HunyuanVideoImageToVideoPipeline` with random weights, built from configs, with its real prompt path.

    The text encoder is a `LlavaForConditionalGeneration` (3-layer Llama text model, 2-layer CLIP vision
    tower at 48 px / patch 2 -> the template's 576 image tokens) with `build_llava_tokenizer` and a
    `CLIPImageProcessor` cropping to 48 px, so `pipe(image=..., prompt=...)` runs the pipeline's own
    chat-template expansion, crop and `image_embed_interleave` on real encoder outputs. The CLIP text
    encoder, transformer and VAE are as in `tiny_hunyuan_video_pipeline`.
    image_condition_type: "latent_concat" (transformer in_channels = 2 * latent_channels + 1) or
    "token_replace" (in_channels = latent_channels; frame 0 replaced by the image latent).
    Same determinism and dtype contract as `tiny_hunyuan_video_pipeline`.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoImageToVideoPipeline
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    _check_hv_sizes(seed, num_attention_heads, attention_head_dim, num_layers, num_single_layers, num_refiner_layers,
                    latent_channels, vae_channels, dtype)
    check_choice("image_condition_type", image_condition_type, ("latent_concat", "token_replace"))
    tokenizer = build_llava_tokenizer()
    tokenizer_2 = build_clip_tokenizer()
    text_hidden = TINY_HUNYUAN_VIDEO["text_hidden_size"]
    image_tokens = DEFAULT_PROMPT_TEMPLATE["image_emb_len"]
    patches_per_side = int(round(image_tokens ** 0.5))
    in_channels = 2 * latent_channels + 1 if image_condition_type == "latent_concat" else latent_channels

    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        text_encoder = LlavaForConditionalGeneration(LlavaConfig(
            text_config=LlamaConfig(
                vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=2 * text_hidden,
                # hidden_states[-3] is read, as in T2V; the expanded sequence is 256 + 103 + 575 tokens long
                num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, rms_norm_eps=1e-6),
            # two layers: Llava reads the vision tower's second-to-last hidden state
            vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=LLAVA_IMAGE_SIZE,
                                           patch_size=LLAVA_IMAGE_SIZE // patches_per_side, projection_dim=16),
            image_token_index=tokenizer.convert_tokens_to_ids(LLAVA_IMAGE_TOKEN), image_seq_length=image_tokens,
            # the pipeline reads the pad id from the top-level config to rebuild the attention mask
            pad_token_id=tokenizer.pad_token_id))
        text_encoder_2, transformer, vae = _hv_clip_transformer_vae(
            tokenizer_2, in_channels=in_channels, latent_channels=latent_channels,
            image_condition_type=image_condition_type, num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim, num_layers=num_layers, num_single_layers=num_single_layers,
            num_refiner_layers=num_refiner_layers, vae_channels=vae_channels)
    finally:
        torch.random.set_rng_state(rng_state)
    pipe = HunyuanVideoImageToVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        image_processor=_clip_image_processor(LLAVA_IMAGE_SIZE))
    return _finish(pipe, (text_encoder, text_encoder_2, transformer, vae), dtype)


# --------------------------------------------------------------------------------------------------
# HunyuanVideo-1.5
# --------------------------------------------------------------------------------------------------

_QWEN_SPECIALS = ("<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>", "<|fill|>")
# The pipeline crops a fixed number of leading tokens (its `prompt_template_encode_start_idx`, 108 for
# the real Qwen2.5-VL tokenizer): the system turn plus the start of the user turn.
HV15_CROP_START = 108


def build_qwen_tokenizer(system: str, crop_start: int = HV15_CROP_START):
    """A fast tokenizer with a Qwen-style chat template standing in for HunyuanVideo-1.5's Qwen2.5-VL tokenizer.

    system: the pipeline's `system_message`. The pipeline renders [system, user] turns with
    `apply_chat_template` and drops the first `crop_start` tokens. Our word-level tokenizer is shorter
    than Qwen's, so the template pads the system turn with `<|fill|>` tokens to make the user's prompt
    start exactly at `crop_start` (checked here at build time).
    """
    from transformers import PreTrainedTokenizerFast

    words = re.findall(r"\w+", system) + ["system", "user", "assistant"]
    tok = _wordpiece_tokenizer(_QWEN_SPECIALS, words, lowercase=False, keep_space_before_digit=True,
                               post_single="$A", post_specials=[])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", unk_token="<unk>",
                                   eos_token="<|im_end|>", padding_side="right", model_max_length=4096)

    def template(fill: int) -> str:
        return ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                "{% if m['role'] == 'system' %}" + "<|fill|>" * fill + "{% endif %}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

    def prefix_length() -> int:
        marker = "qqqqzz"
        ids = fast.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": marker}],
                                       add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        tokens = fast.convert_ids_to_tokens(ids)
        return tokens.index("q")

    fast.chat_template = template(0)
    fill = crop_start - prefix_length()
    if fill < 0:
        raise RuntimeError(f"the tiny Qwen tokenizer's system turn is {crop_start - fill} tokens, longer than "
                           f"crop_start={crop_start}")
    fast.chat_template = template(fill)
    if prefix_length() != crop_start:
        raise RuntimeError(f"the tiny Qwen chat template puts the prompt at token {prefix_length()}, "
                           f"not at crop_start={crop_start}")
    return fast


def tiny_hunyuan_video15_pipeline(*, seed: int = 0, num_attention_heads: int = 2, attention_head_dim: int = 64,
                                  num_layers: int = 2, num_refiner_layers: int = 1, latent_channels: int = 4,
                                  vae_channels: int = 8, image_to_video: bool = False, target_size: int = 256,
                                  dtype: torch.dtype = torch.float32, guidance_scale: float = 6.0):
    """A `HunyuanVideo15Pipeline` (or `HunyuanVideo15ImageToVideoPipeline`) with random weights.

    Text encoders: a tiny `Qwen2_5_VLTextModel` with a locally built chat-template tokenizer, and a tiny
    `T5EncoderModel` with `ByT5Tokenizer` (byte-level: needs no vocabulary file); classifier-free
    guidance through `ClassifierFreeGuidance(guidance_scale)`. The image-to-video variant adds a tiny
    SigLIP vision encoder (729 image tokens, as the real one). target_size: the pixel size the pipeline
    derives its default height/width from (image-to-video always does). Same determinism contract as
    `tiny_hunyuan_video_pipeline`.
    """
    import diffusers
    from diffusers import AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler, HunyuanVideo15Transformer3DModel
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    check_int("seed", seed)
    for name, value in (("num_attention_heads", num_attention_heads), ("num_layers", num_layers),
                        ("num_refiner_layers", num_refiner_layers), ("latent_channels", latent_channels),
                        ("vae_channels", vae_channels)):
        check_int(name, value, minimum=1)
    check_int("attention_head_dim", attention_head_dim, minimum=8)
    if attention_head_dim % 2:
        raise ValueError(f"attention_head_dim={attention_head_dim} is odd; allowed: an even integer >= 8")
    check_int("target_size", target_size, minimum=32)
    check_choice("dtype", dtype, (torch.float32, torch.float16, torch.bfloat16))

    # The system message is the pipeline's own (set in its __init__): build the pipeline, then its tokenizer.
    cls = diffusers.HunyuanVideo15ImageToVideoPipeline if image_to_video else diffusers.HunyuanVideo15Pipeline
    tokenizer_2 = ByT5Tokenizer()
    text_hidden, byt5_hidden, image_dim = 32, 16, 8
    vocab_size = 512  # >= the tiny Qwen tokenizer's vocabulary (checked below)
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
            vocab_size=vocab_size, hidden_size=text_hidden, intermediate_size=2 * text_hidden,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
            pad_token_id=0, bos_token_id=None, eos_token_id=_QWEN_SPECIALS.index("<|im_end|>")))
        text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=byt5_hidden, d_kv=8, d_ff=32,
                                                 num_layers=1, num_heads=2, pad_token_id=tokenizer_2.pad_token_id,
                                                 eos_token_id=tokenizer_2.eos_token_id))
        transformer = HunyuanVideo15Transformer3DModel(
            in_channels=2 * latent_channels + 1, out_channels=latent_channels, num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim, num_layers=num_layers, num_refiner_layers=num_refiner_layers,
            mlp_ratio=4.0, patch_size=1, patch_size_t=1, text_embed_dim=text_hidden, text_embed_2_dim=byt5_hidden,
            image_embed_dim=image_dim, rope_axes_dim=_rope_axes_dim(attention_head_dim), target_size=target_size,
            task_type="i2v" if image_to_video else "t2v")
        vae = AutoencoderKLHunyuanVideo15(latent_channels=latent_channels, block_out_channels=(vae_channels,) * 5,
                                          layers_per_block=1)
        extra = {}
        if image_to_video:
            from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel
            # 27×27 = 729 patches, the number of image tokens the real SigLIP (384 px, patch 14) gives and
            # the pipeline and engine assume.
            extra["image_encoder"] = SiglipVisionModel(SiglipVisionConfig(
                hidden_size=image_dim, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                image_size=54, patch_size=2))
            extra["feature_extractor"] = SiglipImageProcessor(size={"height": 54, "width": 54})
    finally:
        torch.random.set_rng_state(rng_state)
    pipe = cls(text_encoder=text_encoder, tokenizer=None, transformer=transformer, vae=vae,
               scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2,
               tokenizer_2=tokenizer_2, guider=ClassifierFreeGuidance(guidance_scale=guidance_scale), **extra)
    tokenizer = build_qwen_tokenizer(pipe.system_message, pipe.prompt_template_encode_start_idx)
    if len(tokenizer) > vocab_size or tokenizer.pad_token_id != 0 or tokenizer.eos_token_id != 3:
        raise RuntimeError(f"the tiny Qwen tokenizer has {len(tokenizer)} tokens (pad id {tokenizer.pad_token_id}); "
                           f"the tiny text encoder expects at most {vocab_size} (pad id 0, end id 3)")
    pipe.register_modules(tokenizer=tokenizer)
    # diffusers 0.42's HunyuanVideo-1.5 VAE mid-block attention mis-broadcasts its causal mask for a batch
    # of more than one video; decoding one video at a time sidesteps it.
    pipe.vae.enable_slicing()
    for module in (text_encoder, text_encoder_2, transformer, vae, *extra.values()):
        if hasattr(module, "eval"):
            module.eval()
    if dtype != torch.float32:
        for module in (transformer, text_encoder, text_encoder_2):
            module.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# model name -> (builder, fixed keyword arguments)
TINY_BUILDERS = {"hunyuan-video": ("tiny_hunyuan_video_pipeline", {}),
                 "hunyuan-video-i2v": ("tiny_hunyuan_video_i2v_pipeline", {}),
                 "hunyuan-video-1.5": ("tiny_hunyuan_video15_pipeline", {}),
                 "hunyuan-video-1.5-i2v": ("tiny_hunyuan_video15_pipeline", {"image_to_video": True})}


def build_tiny_pipeline(model: str = "hunyuan-video", **kwargs):
    """The tiny pipeline of `model` (one of TINY_BUILDERS: "hunyuan-video", "hunyuan-video-i2v",
    "hunyuan-video-1.5", "hunyuan-video-1.5-i2v"); kwargs go to its builder (e.g. image_condition_type,
    dtype, num_layers)."""
    check_choice("model", model, tuple(TINY_BUILDERS))
    builder, fixed = TINY_BUILDERS[model]
    return globals()[builder](**{**kwargs, **fixed})


def save_tiny_pipeline(path, model: str = "hunyuan-video", **kwargs) -> str:
    """Build the tiny pipeline of `model` (see `build_tiny_pipeline`; kwargs go to its builder) and
    `save_pretrained` it to `path`, a folder that `DiffusionPipeline.from_pretrained(path)` and
    `dvg generate --model PATH` load offline. Returns str(path)."""
    pipe = build_tiny_pipeline(model, **kwargs)
    pipe.save_pretrained(str(path), safe_serialization=True)
    return str(path)
