"""The embedded tiny pipeline (tokenizers, determinism, save/load), video writing, plan plots and
`dvg demo` end to end at a small size."""
import json
import pathlib

import numpy as np
import pytest
import torch

from dvg_engine import tiny
from dvg_engine.plots import plot_plan, tokens_per_step
from dvg_engine.video import compare_grid, tile_videos, to_uint8_frames, write_compare, write_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = dict(height=64, width=96, frames=17, steps=6)


# ---------------------------------------------------------------------------------------------------
# tokenizers
# ---------------------------------------------------------------------------------------------------

def test_llama_tokenizer_template_prefix_is_crop_start():
    """The HunyuanVideo template's prefix must tokenise to exactly crop_start tokens, or the pipeline's
    crop would eat prompt tokens (too few) or leave template tokens in the text (too many)."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
    tok = tiny.build_llama_tokenizer()
    prefix = DEFAULT_PROMPT_TEMPLATE["template"].split("{}")[0]
    assert len(tok(prefix).input_ids) == DEFAULT_PROMPT_TEMPLATE["crop_start"]
    prompt = "A horse galloping, 3 zebras & a Quokka!"
    full = tok(DEFAULT_PROMPT_TEMPLATE["template"].format(prompt)).input_ids
    cropped = tok.convert_ids_to_tokens(full[DEFAULT_PROMPT_TEMPLATE["crop_start"]:])
    assert cropped[-1] == "<|eot_id|>"
    assert tok.unk_token not in cropped
    assert tok.decode(full[DEFAULT_PROMPT_TEMPLATE["crop_start"]:-1]).replace(" ", "") == prompt.replace(" ", "")


def test_tokenizers_pad_right_with_prefix_masks_and_distinct_prompts():
    llama, clip = tiny.build_llama_tokenizer(), tiny.build_clip_tokenizer()
    batch = llama(["a cat", "a dog running across a wide snowy field"], padding="max_length", max_length=32,
                  truncation=True, return_tensors="pt")
    mask = batch.attention_mask
    lengths = mask.sum(1)
    assert lengths[0] < lengths[1]
    for row, n in zip(mask, lengths):  # prefix masks: ones then zeros
        assert row[:n].all() and not row[n:].any()
    out = clip(["a cat", "A CAT", "a dog"], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids = out.input_ids
    assert ids.shape == (3, 77)
    assert torch.equal(ids[0], ids[1])  # CLIP lower-cases
    assert not torch.equal(ids[0], ids[2])
    eos = clip.eos_token_id
    assert ids[0, 0] == clip.bos_token_id and (ids[0] == eos).any()
    long = clip(["word " * 200], padding="max_length", max_length=77, truncation=True).input_ids[0]
    assert len(long) == 77 and long[-1] == eos  # truncation keeps the end token the pooled output reads


# ---------------------------------------------------------------------------------------------------
# tiny pipeline
# ---------------------------------------------------------------------------------------------------

def _small_pipe(seed=0):
    return tiny.tiny_hunyuan_video_pipeline(seed=seed, num_attention_heads=2, num_layers=1, num_single_layers=1)


def test_tiny_pipeline_deterministic_and_restores_global_rng():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = _small_pipe(seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # building did not consume the caller's RNG
    b = _small_pipe(seed=7)
    c = _small_pipe(seed=8)
    for (name, pa), (_, pb), (_, pc) in zip(a.transformer.state_dict().items(), b.transformer.state_dict().items(),
                                            c.transformer.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.transformer.parameters(), c.transformer.parameters()))
    assert a.transformer.config.attention_head_dim == 64
    assert sum(a.transformer.config.rope_axes_dim) == 64


@pytest.mark.parametrize("bad", [dict(attention_head_dim=63), dict(num_layers=0), dict(vae_channels=6),
                                 dict(dtype=torch.int8), dict(seed=1.5)])
def test_tiny_pipeline_rejects_bad_arguments(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        tiny.tiny_hunyuan_video_pipeline(**bad)


def test_tiny_pipeline_save_load_round_trip(tmp_path):
    """The folder `dvg generate --model PATH` loads: same class, same tokenisation, same weights."""
    from diffusers import DiffusionPipeline
    pipe = _small_pipe()
    pipe.save_pretrained(str(tmp_path))
    loaded = DiffusionPipeline.from_pretrained(str(tmp_path))
    assert type(loaded).__name__ == "HunyuanVideoPipeline"
    text = ["a horse galloping", "calm lake"]
    for name in ("tokenizer", "tokenizer_2"):
        kwargs = dict(padding="max_length", max_length=40, truncation=True)
        assert getattr(pipe, name)(text, **kwargs).input_ids == getattr(loaded, name)(text, **kwargs).input_ids
    for module in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        sa, sb = getattr(pipe, module).state_dict(), getattr(loaded, module).state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), module
    with torch.no_grad():
        e1 = pipe.encode_prompt(text, device=torch.device("cpu"), max_sequence_length=32)
        e2 = loaded.encode_prompt(text, device=torch.device("cpu"), max_sequence_length=32)
    for x, y in zip(e1, e2):
        assert torch.equal(x, y)
    # the text mask of a short prompt is a strict prefix: the template was cropped, the prompt kept
    mask = e1[2]
    assert 0 < int(mask[1].sum()) < int(mask[0].sum()) < mask.shape[1]


# ---------------------------------------------------------------------------------------------------
# video
# ---------------------------------------------------------------------------------------------------

def _gradient_video(frames=6, height=32, width=48):
    t = np.linspace(0, 1, frames)[:, None, None, None]
    y = np.linspace(0, 1, height)[None, :, None, None]
    x = np.linspace(0, 1, width)[None, None, :, None]
    return np.broadcast_to(np.concatenate([x + 0 * y + 0 * t, y + 0 * x + 0 * t, 0.5 * t + 0 * x + 0 * y], -1),
                           (frames, height, width, 3)).astype(np.float32)


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_write_video_round_trip(tmp_path, suffix):
    import imageio.v3 as iio
    video = _gradient_video()
    path = write_video(tmp_path / f"v{suffix}", video, fps=8)
    back = iio.imread(path, plugin="FFMPEG" if suffix == ".mp4" else "pillow")
    if back.ndim == 3:
        back = back[None]
    back = back[..., :3]
    assert back.shape == (6, 32, 48, 3)
    error = np.abs(back.astype(np.float32) - to_uint8_frames(video).astype(np.float32)).mean()
    assert error < (6.0 if suffix == ".mp4" else 12.0)  # lossy codecs, smooth content


def test_write_video_odd_size_is_padded_not_resized(tmp_path):
    import imageio.v3 as iio
    path = write_video(tmp_path / "odd.mp4", _gradient_video(height=31, width=45), fps=8)
    assert iio.imread(path, plugin="FFMPEG").shape == (6, 32, 46, 3)


def test_video_inputs_validated(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        write_video(tmp_path / "v.avi", _gradient_video())
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "v.mp4", _gradient_video(), fps=0)
    with pytest.raises(ValueError, match="shape"):
        to_uint8_frames(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        to_uint8_frames(np.full((1, 4, 4, 3), np.nan, np.float32))
    assert to_uint8_frames(torch.ones(1, 2, 2, 3)).max() == 255
    assert to_uint8_frames(np.full((1, 2, 2, 3), 2.0)).max() == 255  # clipped


def test_tile_and_compare_layout(tmp_path):
    a = to_uint8_frames(_gradient_video(frames=4, height=16, width=16))
    b = to_uint8_frames(_gradient_video(frames=6, height=12, width=20))
    tiled = tile_videos([a, b], gap=2)
    assert tiled.shape == (6, 16, 16 + 2 + 20, 3)
    assert np.array_equal(tiled[:4, :, :16], a)  # pixels are placed, never resampled
    assert np.array_equal(tiled[4:, :, :16], np.repeat(a[-1:], 2, axis=0))  # short video holds its last frame
    assert np.array_equal(tiled[:, :12, 18:], b)
    labelled = tile_videos([a, b], labels=["x", "y"], gap=2)
    assert labelled.shape[1] == 16 + 16
    grid = compare_grid([[a, a], [b, b]], column_labels=("baseline", "DVG"), row_labels=("0", "1"), gap=4)
    assert grid.shape[0] == 6 and grid.shape[1] == (16 + 16) + 4 + (16 + 12)
    with pytest.raises(ValueError, match="column"):
        compare_grid([[a]], column_labels=("baseline", "DVG"))
    assert pathlib.Path(write_compare(tmp_path / "c.mp4", [[a, b]], column_labels=("p", "q"), fps=4)).is_file()


# ---------------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------------

def _plans():
    from dvg_engine import planner
    grid = planner.full_grid("hunyuan_video", 256, 256, 49)
    return [planner.plan_stages(grid, 20, 0.5, 0.3, 0.6), planner.plan_stages(grid, 20, 0.5, 0.6, 0.05)]


def test_tokens_per_step_matches_plan_bookkeeping():
    for plan in _plans():
        steps = tokens_per_step(plan)
        assert [s for s, _, _ in steps] == list(range(plan.num_steps))
        assert sum(n for _, _, n in steps) == plan.token_steps
        stages = [k for _, k, _ in steps]
        assert stages == sorted(stages)
        assert [stages.count(k) for k in range(4)] == list(plan.executed_model_calls)
        assert tokens_per_step(plan.to_dict()) == steps
        assert tokens_per_step({"plan": plan.to_dict()}) == steps  # a report sample


def test_report_sample_demands_override_shared_plan_dict():
    from dvg_engine.plots import plan_as_dict
    plan = _plans()[0].to_dict()
    sample = {"plan": plan, "demands": {"spatial_demand": 0.123, "temporal_demand": 0.456}}
    merged = plan_as_dict(sample)
    assert (merged["spatial_demand"], merged["temporal_demand"]) == (0.123, 0.456)
    assert plan["spatial_demand"] == 0.3  # the shared plan dict itself is not modified


def test_plot_plan_writes_png(tmp_path):
    plans = _plans()
    assert plans[0].s2 != plans[1].s2  # two different splits on one figure
    path = plot_plan(plans, tmp_path / "plan.png", labels=["a", "b"])
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    plot_plan(plans[0], tmp_path / "one.svg")
    with pytest.raises(ValueError, match="suffix"):
        plot_plan(plans, tmp_path / "plan.jpg")
    with pytest.raises(ValueError, match="labels"):
        plot_plan(plans, tmp_path / "p.png", labels=["only one"])
    with pytest.raises(ValueError, match="missing"):
        plot_plan([{"stage_shapes": []}], tmp_path / "p.png")


# ---------------------------------------------------------------------------------------------------
# dvg demo, small
# ---------------------------------------------------------------------------------------------------

def test_run_demo_small_writes_every_output(tmp_path, capsys):
    pytest.importorskip("dvg_engine.engine")
    from dvg_engine.demo import RANDOM_WEIGHTS_NOTE, run_demo
    out = tmp_path / "demo"
    report = run_demo(out_dir=str(out), budget=0.5, seed=3, progress=False, **SMALL)
    printed = capsys.readouterr().out
    for name in ("baseline.mp4", "dvg.mp4", "compare.mp4", "plan.png", "report.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "report.json").read_text())
    assert saved["note"] == RANDOM_WEIGHTS_NOTE and "RANDOM weights" in printed
    assert len(saved["samples"]) == 2
    for i, sample in enumerate(saved["samples"]):
        assert sample["seed"] == 3 + i
        assert 0 < sample["token_step_ratio"] < 1 and 0 < sample["attention_flop_ratio"] < 1
        assert sample["stage_shapes"][-1] == [5, 8, 12]  # the full latent grid of 64x96x17
        assert sample["chosen"]["s2"] is not None
    for run in ("baseline", "dvg"):
        assert saved["time_s"][run]["wall"] > 0 and saved["time_s"][run]["transformer"] > 0
    assert saved["time_s"]["baseline"]["transformer_calls"] == SMALL["steps"]
    assert saved["speedup"]["wall"] == pytest.approx(saved["time_s"]["baseline"]["wall"] / saved["time_s"]["dvg"]["wall"])
    assert "token-steps" in printed and "speedup" in printed
    import imageio.v3 as iio
    baseline = iio.imread(out / "baseline.mp4", plugin="FFMPEG")
    dvg = iio.imread(out / "dvg.mp4", plugin="FFMPEG")
    compare = iio.imread(out / "compare.mp4", plugin="FFMPEG")
    assert baseline.shape == dvg.shape and baseline.shape[0] == SMALL["frames"]
    assert compare.shape[1] > baseline.shape[1] and compare.shape[0] == SMALL["frames"]
    assert report["outputs"]["report"] == str(out / "report.json")


def test_demo_image_runs_the_tiny_hunyuan_video_i2v(tmp_path, capsys):
    """`dvg demo --image` runs the embedded HunyuanVideo I2V (Llava prompt encoder): one image per prompt."""
    pytest.importorskip("dvg_engine.engine")
    from PIL import Image
    from dvg_engine import cli
    image = tmp_path / "start.png"
    Image.fromarray((np.random.RandomState(1).rand(72, 120, 3) * 255).astype(np.uint8)).save(image)
    out = tmp_path / "demo"
    code = cli.main(["demo", "--image", str(image), "--out", str(out), "--seed", "2", "--no-progress",
                     "--height", str(SMALL["height"]), "--width", str(SMALL["width"]), "--frames", str(SMALL["frames"]),
                     "--steps", str(SMALL["steps"])])
    printed = capsys.readouterr().out
    assert code == 0
    saved = json.loads((out / "report.json").read_text())
    assert saved["settings"]["model"] == "embedded tiny HunyuanVideo image-to-video (random weights)"
    assert saved["settings"]["image"] == str(image) and "image-to-video" in printed
    assert saved["dvg_report"]["pipeline"] == "HunyuanVideoImageToVideoPipeline"
    assert [s["stage_shapes"][-1] for s in saved["samples"]] == [[5, 8, 12]] * 2
    assert all(0 < s["token_step_ratio"] < 1 for s in saved["samples"])
    import imageio.v3 as iio
    # latent_concat: the pipeline drops the 4 frames decoded from the image frame, in both runs
    assert iio.imread(out / "dvg.mp4", plugin="FFMPEG").shape[0] == SMALL["frames"] - 4
    assert iio.imread(out / "baseline.mp4", plugin="FFMPEG").shape[0] == SMALL["frames"] - 4


@pytest.mark.parametrize("image, needle", [("/no/such.png", "does not exist"), (123, "invalid")])
def test_run_demo_rejects_bad_image_before_building(tmp_path, monkeypatch, image, needle):
    from dvg_engine import demo

    def boom(**kwargs):
        raise AssertionError("the pipeline must not be built for a bad image")
    monkeypatch.setattr(tiny, "tiny_hunyuan_video_i2v_pipeline", boom)
    with pytest.raises(ValueError, match=rf"image=.*{needle}.*allowed: .*PIL image"):
        demo.run_demo(out_dir=str(tmp_path / "d"), image=image, progress=False, **SMALL)
    assert not (tmp_path / "d").exists()


def test_run_demo_rejects_infeasible_budget_before_building(tmp_path, monkeypatch):
    from dvg_engine import demo, planner

    def boom(**kwargs):
        raise AssertionError("the pipeline must not be built for an infeasible budget")
    monkeypatch.setattr(tiny, "tiny_hunyuan_video_pipeline", boom)
    with pytest.raises(planner.InfeasibleBudgetError, match="feasible"):
        demo.run_demo(out_dir=str(tmp_path), budget=0.2, progress=False, **SMALL)
    with pytest.raises(ValueError, match="steps"):
        demo.run_demo(out_dir=str(tmp_path), budget=0.5, progress=False, **dict(SMALL, steps=4))


# ---------------------------------------------------------------------------------------------------
# HunyuanVideo-1.5 tiny pipeline
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hv15_pipe():
    return tiny.tiny_hunyuan_video15_pipeline(num_layers=1)


def test_hv15_chat_template_puts_prompt_at_crop_start(hv15_pipe):
    """HunyuanVideo15Pipeline drops its first prompt_template_encode_start_idx (108) tokens: with our
    tokenizer that must be exactly the system turn and the user-turn header, leaving the prompt."""
    tok = hv15_pipe.tokenizer
    crop = hv15_pipe.prompt_template_encode_start_idx
    conversation = [[{"role": "system", "content": hv15_pipe.system_message},
                     {"role": "user", "content": "a red fox jumping"}]]
    ids = tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
    tokens = tok.convert_ids_to_tokens(ids["input_ids"][0])
    assert tokens[crop:crop + 4] == ["a", "red", "fox", "jumping"]
    assert tok.unk_token not in tokens
    with torch.no_grad():
        embeds, mask, _, _ = hv15_pipe.encode_prompt(["a red fox jumping", "sea"], device=torch.device("cpu"),
                                                     batch_size=2)
    lengths = mask.sum(1).tolist()
    assert lengths[0] > lengths[1] > 0 and embeds.shape[:2] == mask.shape
    for row, n in zip(mask, lengths):
        assert row[:int(n)].all() and not row[int(n):].any()


def test_hv15_save_load_round_trip(hv15_pipe, tmp_path):
    from diffusers import DiffusionPipeline
    hv15_pipe.save_pretrained(str(tmp_path))
    loaded = DiffusionPipeline.from_pretrained(str(tmp_path))
    assert type(loaded).__name__ == "HunyuanVideo15Pipeline"
    with torch.no_grad():
        a = hv15_pipe.encode_prompt(["a fox"], device=torch.device("cpu"))
        b = loaded.encode_prompt(["a fox"], device=torch.device("cpu"))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    sa, sb = hv15_pipe.transformer.state_dict(), loaded.transformer.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
