"""Tiny HunyuanVideo / HunyuanVideo-1.5 pipelines built from configs (no download), for the engine tests.

Text encoders are left out (``None``): the tests pass precomputed prompt embeddings, which is the
pipelines' own supported path. The exception is `hv_i2v_text_pipe`, HunyuanVideo I2V with its real
prompt path (Llava text encoder with the image in the prompt), from `dvg_engine.tiny`.
Head dim 64 (2 heads) so the varlen-attention kernels apply; the geometry 128×192 px × 33 frames gives the
latent grids of the parity setups (HV [9,16,24], HV-1.5 [9,8,12]), for which budget 0.5 with 12 steps is
feasible and all four stages are distinct.
"""
from __future__ import annotations

import torch

HEIGHT, WIDTH, FRAMES, STEPS = 128, 192, 33, 12
HV_TEXT_LEN, HV_TEXT_DIM, HV_POOLED_DIM = 12, 16, 8
HV15_TEXT_LEN, HV15_TEXT_DIM, HV15_TEXT2_LEN, HV15_TEXT2_DIM, HV15_IMAGE_DIM = 10, 16, 6, 12, 8
HV15_IMAGE_TOKENS = 729  # the pipeline's fixed number of (masked in T2V) image tokens


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


def hv_transformer(image_condition_type=None, in_channels=4, num_layers=1, num_single_layers=1, heads=2,
                   head_dim=64, seed=0):
    from diffusers import HunyuanVideoTransformer3DModel
    _seed(seed)
    return HunyuanVideoTransformer3DModel(
        in_channels=in_channels, out_channels=4, num_attention_heads=heads, attention_head_dim=head_dim,
        num_layers=num_layers, num_single_layers=num_single_layers, num_refiner_layers=1, mlp_ratio=2.0,
        patch_size=2, patch_size_t=1, guidance_embeds=True, text_embed_dim=HV_TEXT_DIM,
        pooled_projection_dim=HV_POOLED_DIM, rope_axes_dim=(16, 24, 24) if head_dim == 64 else (32, 48, 48),
        image_condition_type=image_condition_type).eval()


def hv_vae(seed=0):
    from diffusers import AutoencoderKLHunyuanVideo
    _seed(seed)
    return AutoencoderKLHunyuanVideo(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        mid_block_add_attention=False).eval()


def flow_scheduler(shift=7.0):
    from diffusers import FlowMatchEulerDiscreteScheduler
    return FlowMatchEulerDiscreteScheduler(shift=shift)


def hv_pipe(seed=0, **transformer_kwargs):
    from diffusers import HunyuanVideoPipeline
    return HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=hv_transformer(seed=seed, **transformer_kwargs),
                                vae=hv_vae(seed), scheduler=flow_scheduler(7.0), text_encoder_2=None, tokenizer_2=None)


def hv_prompt(batch=1, valid_lengths=None, seed=1):
    """HV precomputed prompt: (prompt_embeds (B, L, D), pooled (B, P), mask (B, L) prefix masks)."""
    g = torch.Generator().manual_seed(seed)
    valid_lengths = valid_lengths or [HV_TEXT_LEN - 3 - b for b in range(batch)]
    embeds = torch.randn(batch, HV_TEXT_LEN, HV_TEXT_DIM, generator=g)
    pooled = torch.randn(batch, HV_POOLED_DIM, generator=g)
    mask = torch.zeros(batch, HV_TEXT_LEN)
    for b, n in enumerate(valid_lengths):
        mask[b, :n] = 1
    return dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, prompt_attention_mask=mask)


def hv15_transformer(task_type="t2v", num_layers=2, heads=2, head_dim=64, seed=0, latent_channels=4):
    from diffusers import HunyuanVideo15Transformer3DModel
    _seed(seed)
    return HunyuanVideo15Transformer3DModel(
        in_channels=2 * latent_channels + 1, out_channels=latent_channels, num_attention_heads=heads,
        attention_head_dim=head_dim, num_layers=num_layers, num_refiner_layers=1, mlp_ratio=2.0, patch_size=1,
        patch_size_t=1, text_embed_dim=HV15_TEXT_DIM, text_embed_2_dim=HV15_TEXT2_DIM,
        image_embed_dim=HV15_IMAGE_DIM, rope_axes_dim=(16, 24, 24) if head_dim == 64 else (32, 48, 48),
        target_size=192, task_type=task_type).eval()


def hv15_vae(seed=0):
    from diffusers import AutoencoderKLHunyuanVideo15
    _seed(seed)
    return AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1).eval()


def hv15_pipe(seed=0, guidance_scale=1.0, shift=7.0, **transformer_kwargs):
    from diffusers import ClassifierFreeGuidance, HunyuanVideo15Pipeline
    return HunyuanVideo15Pipeline(text_encoder=None, tokenizer=None, transformer=hv15_transformer(seed=seed, **transformer_kwargs),
                                  vae=hv15_vae(seed), scheduler=flow_scheduler(shift), text_encoder_2=None,
                                  tokenizer_2=None, guider=ClassifierFreeGuidance(guidance_scale=guidance_scale))


def hv15_prompt(batch=1, seed=1, negative=False):
    g = torch.Generator().manual_seed(seed)
    out = {}
    prefixes = [""] + (["negative_"] if negative else [])
    for prefix in prefixes:
        mask = torch.zeros(batch, HV15_TEXT_LEN)
        mask2 = torch.zeros(batch, HV15_TEXT2_LEN)
        for b in range(batch):
            mask[b, :HV15_TEXT_LEN - 2 - b] = 1
            mask2[b, :HV15_TEXT2_LEN - 1 - b] = 1
        out[prefix + "prompt_embeds"] = torch.randn(batch, HV15_TEXT_LEN, HV15_TEXT_DIM, generator=g)
        out[prefix + "prompt_embeds_mask"] = mask
        out[prefix + "prompt_embeds_2"] = torch.randn(batch, HV15_TEXT2_LEN, HV15_TEXT2_DIM, generator=g)
        out[prefix + "prompt_embeds_mask_2"] = mask2
    return out


def hv15_i2v_pipe(seed=0, guidance_scale=1.0, shift=7.0, target_size=192):
    """HV-1.5 I2V with a tiny SigLIP image encoder (384 px / patch 14 -> the pipeline's 729 image tokens)."""
    from diffusers import ClassifierFreeGuidance, HunyuanVideo15ImageToVideoPipeline
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel
    _seed(seed)
    encoder = SiglipVisionModel(SiglipVisionConfig(hidden_size=HV15_IMAGE_DIM, intermediate_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=384, patch_size=14)).eval()
    extractor = SiglipImageProcessorPil(size={"height": 384, "width": 384})
    transformer = hv15_transformer(task_type="i2v", seed=seed)
    transformer.register_to_config(target_size=target_size)
    return HunyuanVideo15ImageToVideoPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=hv15_vae(seed), scheduler=flow_scheduler(shift),
        text_encoder_2=None, tokenizer_2=None, guider=ClassifierFreeGuidance(guidance_scale=guidance_scale),
        image_encoder=encoder, feature_extractor=extractor)


def test_image(height=HEIGHT, width=WIDTH, seed=3):
    """A deterministic RGB PIL image with structure (a gradient plus a square)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    img[height // 4:height // 2, width // 4:width // 2] = rng.integers(0, 255, 3)
    return Image.fromarray(img.astype(np.uint8))


def hv_i2v_pipe(image_condition_type="latent_concat", seed=0):
    from diffusers import HunyuanVideoImageToVideoPipeline
    channels = 2 * 4 + 1 if image_condition_type == "latent_concat" else 4
    transformer = hv_transformer(image_condition_type=image_condition_type, in_channels=channels, seed=seed)
    return HunyuanVideoImageToVideoPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=hv_vae(seed),
                                            scheduler=flow_scheduler(7.0), text_encoder_2=None, tokenizer_2=None,
                                            image_processor=None)


def gens(batch, seed=0):
    """One CPU generator per sample: seeds seed, seed+1, ...."""
    return [torch.Generator().manual_seed(seed + b) for b in range(batch)]


def hv_i2v_text_pipe(image_condition_type="latent_concat", seed=0):
    """HV I2V with its real prompt path: the tiny Llava text encoder (image in the prompt), CLIP text encoder,
    tokenizers and CLIP image processor of `dvg_engine.tiny`; 2 heads × 64, one double and one single block."""
    from dvg_engine.tiny import tiny_hunyuan_video_i2v_pipeline
    return tiny_hunyuan_video_i2v_pipeline(seed=seed, image_condition_type=image_condition_type, num_attention_heads=2,
                                           num_layers=1, num_single_layers=1)
