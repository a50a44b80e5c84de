"""HunyuanVideo-1.5 I2V batches through the compiled pipeline: the pipeline itself takes one PIL image only; the
engine also takes a list of one image per prompt (as for HunyuanVideo I2V, tests/test_engine_i2v_batch.py). One
image for two prompts equals the list of it twice; two different images each condition their own video on latent
frame 0 (on every stage's grid) and each video equals its prompt run alone with its image."""
import pytest
import torch

import _tiny_pipes as tp
from _tolerances import assert_verbose_allclose

from dvg_engine import planner
from dvg_engine.engine import compile_pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARGS = dict(num_frames=tp.FRAMES, num_inference_steps=tp.STEPS, output_type="latent")
DEMANDS = [{"spatial_demand": 1.0, "temporal_demand": 0.0}, {"spatial_demand": 0.0, "temporal_demand": 1.0}]
ATTN_ATOL = 2e-4  # a batch (padded or packed) vs each sample alone: the attention's summation order differs


@pytest.fixture(scope="module")
def pipe():
    pipe = tp.hv15_i2v_pipe()
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    if "dvg" in pipe.__dict__:
        pipe.dvg.restore()


def _images():
    return [tp.test_image(seed=3), tp.test_image(seed=11)]


def _image_latent(pipe, image):
    """(1, C, 1, H, W): the pipeline's own encode of one image at the video size it derives from it."""
    height, width = pipe.video_processor.calculate_default_height_width(height=image.size[1], width=image.size[0],
                                                                        target_size=pipe.target_size)
    image = pipe.video_processor.resize(image, height=height, width=width, resize_mode="crop")
    return pipe._get_image_latents(vae=pipe.vae, image_processor=pipe.video_processor, image=image, height=height,
                                   width=width, device=torch.device("cpu"))


def test_one_image_for_two_prompts_equals_a_list_of_it(pipe):
    compile_pipeline(pipe, budget=0.5)
    single = pipe(image=tp.test_image(), **tp.hv15_prompt(2), **ARGS, generator=tp.gens(2)).frames
    listed = pipe(image=[tp.test_image()] * 2, **tp.hv15_prompt(2), **ARGS, generator=tp.gens(2)).frames
    assert single.shape[0] == 2 and torch.isfinite(single).all()
    assert torch.equal(single, listed)
    pipe.dvg.restore()


@pytest.mark.parametrize("videos", [1, 2])
def test_each_image_conditions_its_own_video_on_frame0(pipe, videos):
    """One plan for the batch (plan_scope="batch"): the transformer input's condition channels hold, on latent
    frame 0 of each stage grid, the sample's own image latent sub-sampled on the stage's axes; zeros elsewhere.
    With num_videos_per_prompt=2 the batch is prompt-major: image i conditions videos 2i and 2i + 1."""
    images = _images()
    expected = [_image_latent(pipe, img) for img in images]
    assert (expected[0] - expected[1]).abs().max() > 0.1  # the two images differ in latent space
    compile_pipeline(pipe, budget=0.5, plan_scope="batch")
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["hidden_states"].clone()),
                                                      with_kwargs=True)
    try:
        pipe(image=images, **tp.hv15_prompt(2), **ARGS, num_videos_per_prompt=videos, generator=tp.gens(2 * videos))
    finally:
        hook.remove()
    report = pipe.dvg.last_report
    sample = report["samples"][0]
    assert len(report["samples"]) == 2 * videos
    assert all(other["stage_shapes"] == sample["stage_shapes"] for other in report["samples"])
    # stage 0 ran before planning: its condition uses the initial plan's axes (the reference's quirk Q12)
    initial = planner.initial_plan(planner.FullGrid.from_dict(report["grid"]), tp.STEPS, 0.5)
    axes = [initial.stage_axes[0]] + [tuple(a) for a in sample["stage_axes"][1:]]
    starts = [sum(report["executed_model_calls"][:k]) for k in range(4)]
    assert len(calls) == tp.STEPS
    channels = pipe.transformer.config.in_channels // 2
    for stage, step in enumerate(starts):
        hidden = calls[step]
        rows = torch.tensor(list(axes[stage][1]))
        cols = torch.tensor(list(axes[stage][2]))
        assert list(hidden.shape[2:]) == sample["stage_shapes"][stage]
        for b in range(2 * videos):
            own = expected[b // videos].index_select(3, rows).index_select(4, cols)[0, :, 0]
            assert torch.equal(hidden[b, channels:2 * channels, 0], own.to(hidden.dtype)), (stage, b)
        assert not hidden[:, channels:2 * channels, 1:].any()
        assert bool((hidden[:, 2 * channels, 0] == 1).all()) and not hidden[:, 2 * channels, 1:].any()
    pipe.dvg.restore()


def test_two_images_with_different_plans_match_single_runs(pipe):
    """Per-sample plans (packed from stage 1 on): each video equals its prompt run alone with its own image, and
    differs from that prompt run with the other image (so the image does reach the video)."""
    images = _images()
    prompt = tp.hv15_prompt(2)
    compile_pipeline(pipe, budget=0.5, plan=DEMANDS)
    both = pipe(image=images, **prompt, **ARGS, generator=tp.gens(2)).frames
    shapes = [s["stage_shapes"] for s in pipe.dvg.last_report["samples"]]
    assert shapes[0] != shapes[1]
    for b in range(2):
        compile_pipeline(pipe, plan=[DEMANDS[b]])
        single = {k: v[b:b + 1] for k, v in prompt.items()}
        alone = pipe(image=images[b], **single, **ARGS, generator=tp.gens(1, seed=b)).frames
        assert pipe.dvg.last_report["samples"][0]["stage_shapes"] == shapes[b]
        assert_verbose_allclose(both[b:b + 1], alone, atol=ATTN_ATOL, rtol=1e-4, name=f"image {b}")
        other = pipe(image=images[1 - b], **single, **ARGS, generator=tp.gens(1, seed=b)).frames
        assert (other - alone).abs().max() > 100 * ATTN_ATOL
    pipe.dvg.restore()


@pytest.mark.parametrize("image,error,message", [
    ("three", ValueError, r"image=<3 images> is invalid for 2 prompts; allowed: one image \(used for every prompt\) "
                          r"or a list of 2 images, one per prompt"),
    ("not_pil", TypeError, r"image\[1\]=.* is invalid; allowed: a PIL.Image.Image \(one per prompt\)"),
    ("sizes", ValueError, r"image\[1\]=.* is invalid; allowed: an image whose video size \(height, width\) is "
                          r"\(\d+, \d+\) like image\[0\]'s.*gives \(\d+, \d+\)"),
])
def test_image_list_errors(pipe, image, error, message):
    images = {"three": [tp.test_image()] * 3, "not_pil": [tp.test_image(), torch.zeros(3, 8, 8)],
              "sizes": [tp.test_image(), tp.test_image(height=tp.WIDTH, width=tp.HEIGHT)]}[image]
    compile_pipeline(pipe, budget=0.5)
    try:
        with pytest.raises(error, match=message):
            pipe(image=images, **tp.hv15_prompt(2), **ARGS, generator=tp.gens(2))
    finally:
        pipe.dvg.restore()
