"""The `dvg` CLI contract: exit codes (0 ok, 2 usage/bad value with one argparse-style line, 1 runtime
failure with one line, traceback only with --debug), `dvg generate` on a saved local tiny pipeline,
`dvg plan` delegation and `dvg bench` appending to a results file."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dvg_engine import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
GEOMETRY = ["--height", "128", "--width", "128", "--frames", "17", "--steps", "8"]


@pytest.fixture(autouse=True)
def _library_log_handlers_follow_capture():
    """diffusers and transformers create their log handler once, bound to the sys.stderr of that moment;
    under capsys that stream is closed after the test that created it, so point it at the current one."""
    import logging
    import sys as _sys
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging
    for module in (diffusers_logging, transformers_logging):
        handler = getattr(module, "_default_handler", None)
        if isinstance(handler, logging.StreamHandler):
            # not setStream(): it flushes the old stream first, which an earlier test's capture may have closed
            handler.stream = _sys.stderr
            handler.flush = _sys.stderr.flush
    yield


def _main(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(err, prog, *needles):
    """Exactly one error line, the last thing on stderr (status lines like "loading ..." may precede it),
    naming each needle; no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert errors[0].startswith(f"{prog}: error: "), errors[0]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


# ---------------------------------------------------------------------------------------------------
# usage errors: exit 2, one line naming the flag, the value and what is allowed
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, prog, needles", [
    (["demo", "--budget", "1.5"], "dvg demo", ["--budget", "1.5", "(0, 1]"]),
    (["demo", "--budget", "abc"], "dvg demo", ["--budget", "'abc'"]),
    (["demo", "--steps", "0"], "dvg demo", ["--steps", ">= 1"]),
    (["demo", "--frames", "30"], "dvg demo", ["--frames", "4k+1", "29"]),
    (["demo", "--height", "100"], "dvg demo", ["--height", "multiple of 16"]),
    (["demo", "--budget", "0.2"], "dvg demo", ["--budget", "feasible budgets"]),
    (["demo", "--steps", "4"], "dvg demo", ["--steps", "at least 5"]),
    (["demo", "--image", "/no/such.png"], "dvg demo", ["--image", "'/no/such.png'", "image file"]),
    (["generate", "--prompt", "x"], "dvg generate", ["--model"]),
    (["generate", "--model", "tiny", "--prompt", "x", "--out", "v.avi"], "dvg generate", ["--out", ".mp4"]),
    (["generate", "--model", "tiny", "--prompt", "x", "--option", "nope=1"], "dvg generate",
     ["--option", "transition_noise"]),
    (["generate", "--model", "tiny", "--prompt", "x", "--option", "transition_noise=sometimes"], "dvg generate",
     ["transition_noise", "'sometimes'"]),
    (["generate", "--model", "tiny", "--prompt", "x", "--option", "budget=0.4"], "dvg generate", ["--budget"]),
    (["generate", "--model", "tiny", "--prompt", "x", "--image", "/no/such.png"], "dvg generate", ["--image"]),
    (["generate", "--model", "tiny-i2v", "--prompt", "x"], "dvg generate",
     ["--image", "required", "HunyuanVideoImageToVideoPipeline"]),
    (["generate", "--model", "tiny-1.5-i2v", "--prompt", "x"], "dvg generate",
     ["--image", "required", "HunyuanVideo15ImageToVideoPipeline"]),
    (["generate", "--model", "tiny", "--prompt", "x", "--plan", "/no/such.json"], "dvg generate", ["--plan"]),
    (["generate", "--model", "tiny", "--prompt", "x", "--device", "tpu"], "dvg generate", ["--device", "'tpu'"]),
    (["generate", "--model", "./no/such/folder", "--prompt", "x"], "dvg generate", ["--model"]),
    (["generate", "--model", "tiny", "--prompt", "x", "--no-dvg", "--baseline"], "dvg generate", ["--no-dvg"]),
    (["plan", "--budget", "2"], "dvg plan", ["budget"]),
    (["bench", "--only", "bench_nope", "--results", "IGNORED"], "dvg bench", ["bench_nope"]),
    (["frobnicate"], "dvg", ["invalid choice"]),
])
def test_usage_errors_exit_2_with_one_line(argv, prog, needles, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [str(tmp_path / "R.md") if a == "IGNORED" else a for a in argv]
    with pytest.raises(SystemExit) as info:  # argparse-level errors exit from the parser
        code = cli.main(argv)
        raise SystemExit(code)
    assert info.value.code == 2
    _assert_one_line_error(capsys.readouterr().err, prog, *needles)
    assert not (tmp_path / "R.md").exists()


def test_generate_infeasible_budget_exits_2_before_loading(tmp_path, capsys, monkeypatch):
    from dvg_engine import tiny

    def boom(**kwargs):
        raise AssertionError("no pipeline may be built for a bad --budget")
    monkeypatch.setattr(tiny, "tiny_hunyuan_video_pipeline", boom)
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "HunyuanVideoPipeline"}))
    code, _, err = _main(["generate", "--model", str(folder), "--prompt", "x", "--budget", "0.2", *GEOMETRY,
                          "--out", str(tmp_path / "v.mp4")], capsys)
    assert code == 2
    _assert_one_line_error(err, "dvg generate", "--budget", "feasible budgets")


def test_generate_unsupported_pipeline_class_exits_2(tmp_path, capsys):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    code, _, err = _main(["generate", "--model", str(tmp_path), "--prompt", "x"], capsys)
    assert code == 2
    _assert_one_line_error(err, "dvg generate", "StableDiffusionPipeline", "HunyuanVideo15Pipeline")


def test_runtime_failure_exits_1_one_line_and_debug_shows_traceback(tmp_path, capsys):
    """A folder that claims a supported pipeline but holds no weights fails at load time: exit 1."""
    (tmp_path / "model_index.json").write_text(json.dumps({
        "_class_name": "HunyuanVideoPipeline", "_diffusers_version": "0.42.1",
        "transformer": ["diffusers", "HunyuanVideoTransformer3DModel"]}))
    argv = ["generate", "--model", str(tmp_path), "--prompt", "x", *GEOMETRY, "--out", str(tmp_path / "v.mp4")]
    code, _, err = _main(argv, capsys)
    assert code == 1
    _assert_one_line_error(err, "dvg generate", "--debug")
    code, _, err = _main(argv + ["--debug"], capsys)
    assert code == 1 and "Traceback" in err


def test_offline_hub_id_is_a_one_line_runtime_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing can resolve
    code, _, err = _main(["generate", "--model", "nobody/not-a-model", "--prompt", "x", *GEOMETRY,
                          "--out", str(tmp_path / "v.mp4")], capsys)
    assert code == 1
    _assert_one_line_error(err, "dvg generate", "nobody/not-a-model", "HF_HUB_OFFLINE")


def test_console_entry_point_contract():
    """The installed `dvg` script (or `python -m dvg_engine.cli`): --help exits 0, a bad value exits 2 with
    exactly one stderr line and no traceback."""
    exe = pathlib.Path(sys.executable).with_name("dvg")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "dvg_engine.cli"]
    ok = subprocess.run(base + ["--help"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "generate" in ok.stdout and "bench" in ok.stdout
    bad = subprocess.run(base + ["generate", "--model", "tiny", "--prompt", "x", "--frames", "10"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    _assert_one_line_error(bad.stderr, "dvg generate", "--frames", "4k+1")


# ---------------------------------------------------------------------------------------------------
# dvg generate on a saved local pipeline (no network)
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    from dvg_engine.tiny import save_tiny_pipeline
    folder = tmp_path_factory.mktemp("tiny_hv")
    return save_tiny_pipeline(folder, num_attention_heads=2, num_layers=1, num_single_layers=1)


def test_generate_local_folder_with_baseline_report_plot(saved_pipeline, tmp_path, capsys, monkeypatch):
    pytest.importorskip("dvg_engine.engine")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "video.mp4"
    code, stdout, err = _main(["generate", "--model", saved_pipeline, "--prompt", "a horse galloping",
                               "--prompt", "a quiet lake", *GEOMETRY, "--seed", "5", "--baseline", "--fps", "8",
                               "--report", str(tmp_path / "r.json"), "--plot", str(tmp_path / "p.png"),
                               "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    for name in ("video_0.mp4", "video_1.mp4", "video_baseline_0.mp4", "video_baseline_1.mp4",
                 "video_compare.mp4", "p.png", "r.json"):
        assert (tmp_path / name).is_file(), name
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pipeline"] == "HunyuanVideoPipeline" and report["seed"] == 5
    assert report["geometry"] == {"height": 128, "width": 128, "num_frames": 17, "num_inference_steps": 8}
    samples = report["dvg_report"]["samples"]
    assert len(samples) == 2 and all(0 < s["token_step_ratio"] < 1 for s in samples)
    assert report["speedup"] == pytest.approx(report["time_s"]["baseline"] / report["time_s"]["dvg"])
    assert "video 0:" in stdout and "token-steps" in stdout
    import imageio.v3 as iio
    assert iio.imread(tmp_path / "video_0.mp4", plugin="FFMPEG").shape == (17, 128, 128, 3)

    # Replaying the report's plans (--plan) reproduces the same plans and the same video.
    code, _, err = _main(["generate", "--model", saved_pipeline, "--prompt", "a horse galloping",
                          "--prompt", "a quiet lake", *GEOMETRY, "--seed", "5", "--plan", str(tmp_path / "r.json"),
                          "--report", str(tmp_path / "r2.json"), "--out", str(tmp_path / "replay.mp4"),
                          "--fps", "8", "--no-progress"], capsys)
    assert code == 0, err
    replay = json.loads((tmp_path / "r2.json").read_text())
    assert [s["stage_shapes"] for s in replay["dvg_report"]["samples"]] == [s["stage_shapes"] for s in samples]
    a = iio.imread(tmp_path / "video_0.mp4", plugin="FFMPEG").astype(int)
    b = iio.imread(tmp_path / "replay_0.mp4", plugin="FFMPEG").astype(int)
    assert abs(a - b).max() <= 2  # same latents and encoder settings


def test_generate_budget_fallback_nearest(saved_pipeline, tmp_path, capsys):
    code, out, err = _main(["generate", "--model", saved_pipeline, "--prompt", "x", *GEOMETRY, "--budget", "0.2",
                            "--budget-fallback", "nearest", "--report", str(tmp_path / "r.json"),
                            "--out", str(tmp_path / "v.mp4"), "--no-progress"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())["dvg_report"]
    assert report["budget"] == 0.2 and report["budget_used"] > 0.4  # the nearest feasible budget, recorded
    assert "nearest feasible budget" in out


def test_generate_no_dvg_and_image_refused_for_t2v(saved_pipeline, tmp_path, capsys):
    out = tmp_path / "plain.gif"
    code, _, err = _main(["generate", "--model", saved_pipeline, "--prompt", "x", *GEOMETRY, "--no-dvg",
                          "--out", str(out), "--report", str(tmp_path / "r.json"), "--no-progress"], capsys)
    assert code == 0, err
    assert out.is_file() and "dvg_report" not in json.loads((tmp_path / "r.json").read_text())
    image = tmp_path / "img.png"
    from PIL import Image
    Image.new("RGB", (16, 16)).save(image)
    code, _, err = _main(["generate", "--model", saved_pipeline, "--prompt", "x", *GEOMETRY, "--image", str(image),
                          "--out", str(tmp_path / "v.mp4"), "--no-progress"], capsys)
    assert code == 2
    _assert_one_line_error(err, "dvg generate", "--image", "text-to-video")


# ---------------------------------------------------------------------------------------------------
# dvg plan (delegates to plan_cli)
# ---------------------------------------------------------------------------------------------------

def test_plan_subcommand_delegates(capsys, tmp_path):
    code, out, err = _main(["plan", "--model", "hunyuan-video", "--height", "720", "--width", "1280", "--frames", "121",
                            "--steps", "50", "--budget", "0.5", "--spatial-demand", "0.3", "--temporal-demand", "0.3",
                            "--json"], capsys)
    assert code == 0, err
    plan = json.loads(out)
    # dvg-spec.md §7.4 worked example: S = M = 0.3 chooses (0.8, 18)
    assert (plan["s2"], plan["t23"]) == (0.8, 18)
    assert plan["stage_shapes"][1] == [18, 72, 128]


# ---------------------------------------------------------------------------------------------------
# dvg bench
# ---------------------------------------------------------------------------------------------------

def _bench_dir(tmp_path):
    folder = tmp_path / "benches"
    folder.mkdir()
    (folder / "bench_alpha.py").write_text(
        "def run(device, quick):\n"
        "    return {'title': 'alpha', 'compared': 'ours vs torch', 'rows': [{'shape': '1x17', 'ours_ms': 1.5,"
        " 'torch_ms': 3.0}], 'ratios': {'torch/ours': 2.0}, 'notes': 'device=' + device + ' quick=' + str(quick)}\n")
    (folder / "bench_beta.py").write_text("def run(quick=False):\n    return [{'case': 'b', 'quick': quick}]\n")
    (folder / "bench_gamma.py").write_text("X = 1\n")
    return folder


def test_bench_appends_section_to_given_path(tmp_path, capsys):
    tracked = REPO / "benchmarks" / "RESULTS.md"
    before = tracked.read_bytes() if tracked.exists() else None
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nearlier section\n")
    code, out, err = _main(["bench", "--quick", "--bench-dir", str(_bench_dir(tmp_path)), "--results", str(results)],
                           capsys)
    assert code == 0, err
    text = results.read_text()
    assert text.startswith("# Benchmark results\n\nearlier section\n")
    section = text.split("earlier section\n", 1)[1]
    assert "## dvg bench --quick" in section and "UTC" in section
    assert "- commit: " in section and "- machine: " in section and "device: cpu" in section
    assert "| shape | ours_ms | torch_ms |" in section and "| 1x17 | 1.5 | 3 |" in section
    assert "ratios: torch/ours = 2" in section and "device=cpu quick=True" in section
    assert "| b | True |" in section  # run(quick) without a device parameter
    assert "bench_gamma" in section and "skipped" in section
    assert (tracked.read_bytes() if tracked.exists() else None) == before  # the tracked file is untouched


def test_bench_records_failure_and_exits_1(tmp_path, capsys):
    folder = _bench_dir(tmp_path)
    (folder / "bench_broken.py").write_text("def run(device, quick):\n    raise RuntimeError('kaboom')\n")
    results = tmp_path / "new" / "R.md"
    code, _, _ = _main(["bench", "--bench-dir", str(folder), "--results", str(results), "--only", "bench_broken",
                        "--only", "bench_alpha"], capsys)
    assert code == 1
    text = results.read_text()
    assert "bench_broken" in text and "FAILED" in text and "kaboom" in text
    assert "bench_alpha" in text and "bench_beta" not in text


def test_bench_gpu_without_cuda_is_runtime_error(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    results = tmp_path / "R.md"
    code, _, err = _main(["bench", "--gpu", "--bench-dir", str(_bench_dir(tmp_path)), "--results", str(results)],
                         capsys)
    assert code == 1 and not results.exists()
    _assert_one_line_error(err, "dvg bench", "CUDA")


def test_bench_skips_by_devices_and_benchmark_skipped(tmp_path, capsys):
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "bench_gpuonly.py").write_text("DEVICES = ('cuda',)\ndef run(device, quick):\n    raise AssertionError\n")
    (folder / "bench_selfskip.py").write_text(
        "class BenchmarkSkipped(Exception):\n    pass\n"
        "def run(device, quick):\n    raise BenchmarkSkipped('needs flash-attn')\n")
    results = tmp_path / "R.md"
    code, _, err = _main(["bench", "--bench-dir", str(folder), "--results", str(results)], capsys)
    assert code == 0, err
    text = results.read_text()
    assert "bench_gpuonly" in text and "runs on cuda only" in text
    assert "bench_selfskip" in text and "needs flash-attn" in text and "FAILED" not in text


def test_generate_hunyuan_video_15_local_folder(tmp_path_factory, tmp_path, capsys, monkeypatch):
    pytest.importorskip("dvg_engine.engine")
    from dvg_engine.tiny import save_tiny_pipeline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = save_tiny_pipeline(tmp_path_factory.mktemp("tiny_hv15"), model="hunyuan-video-1.5", num_layers=1)
    code, out, err = _main(["generate", "--model", folder, "--prompt", "a red fox", "--prompt", "the sea",
                            "--height", "64", "--width", "96", "--frames", "17", "--steps", "8",
                            "--guidance-scale", "4.5", "--report", str(tmp_path / "r.json"),
                            "--out", str(tmp_path / "fox.mp4"), "--no-progress"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pipeline"] == "HunyuanVideo15Pipeline"
    assert report["call"]["guider_guidance_scale"] == 4.5  # HunyuanVideo-1.5 takes the scale through its guider
    assert report["dvg_report"]["model"] == "hunyuan_video_1_5"
    assert [s["stage_shapes"][-1] for s in report["dvg_report"]["samples"]] == [[5, 4, 6], [5, 4, 6]]
    assert (tmp_path / "fox_0.mp4").is_file() and (tmp_path / "fox_1.mp4").is_file()


def test_generate_hunyuan_video_15_image_to_video(tmp_path_factory, tmp_path, capsys, monkeypatch):
    pytest.importorskip("dvg_engine.engine")
    from PIL import Image
    from dvg_engine.tiny import save_tiny_pipeline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = save_tiny_pipeline(tmp_path_factory.mktemp("tiny_hv15_i2v"), model="hunyuan-video-1.5-i2v",
                                num_layers=1, target_size=64)
    image = tmp_path / "start.png"
    Image.fromarray((np.random.RandomState(0).rand(48, 80, 3) * 255).astype(np.uint8)).save(image)
    base = ["generate", "--model", folder, "--prompt", "a red fox", "--frames", "17", "--steps", "6",
            "--out", str(tmp_path / "i2v.mp4"), "--no-progress"]
    code, _, err = _main(base, capsys)  # an image-to-video pipeline without --image
    assert code == 2
    _assert_one_line_error(err, "dvg generate", "--image", "required")
    code, _, err = _main(base + ["--image", str(image), "--height", "64"], capsys)  # it sizes itself from the image
    assert code == 2
    _assert_one_line_error(err, "dvg generate", "--height", "not supported")
    code, out, err = _main(base + ["--image", str(image), "--report", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pipeline"] == "HunyuanVideo15ImageToVideoPipeline"
    assert report["dvg_report"]["samples"][0]["stage_shapes"][-1][0] == 5
    assert (tmp_path / "i2v.mp4").is_file()


# ---------------------------------------------------------------------------------------------------
# dvg generate --image on HunyuanVideo I2V (the tiny Llava text encoder: the image goes into the prompt)
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_hv_i2v(tmp_path_factory):
    from dvg_engine.tiny import save_tiny_pipeline
    small = dict(num_attention_heads=2, num_layers=1, num_single_layers=1)
    return {mode: save_tiny_pipeline(tmp_path_factory.mktemp(f"tiny_hv_i2v_{mode}"), model="hunyuan-video-i2v",
                                     image_condition_type=mode, **small)
            for mode in ("latent_concat", "token_replace")}


def _start_image(path):
    from PIL import Image
    y, x = np.mgrid[0:96, 0:160]
    Image.fromarray(np.stack([x * 255 // 159, y * 255 // 95, (x * y) % 256], -1).astype(np.uint8)).save(path)
    return str(path)


def test_generate_hunyuan_video_i2v_two_prompts(saved_hv_i2v, tmp_path, capsys, monkeypatch):
    """Two prompts with one --image: the CLI gives the pipeline one (prompt, image) pair per video, since
    diffusers' HunyuanVideo I2V encodes the image inside each prompt (Llava) and cannot share one image."""
    pytest.importorskip("dvg_engine.engine")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, image = saved_hv_i2v["latent_concat"], _start_image(tmp_path / "start.png")
    base = ["generate", "--model", folder, "--prompt", "a horse galloping", "--prompt", "a quiet lake", *GEOMETRY,
            "--out", str(tmp_path / "i2v.mp4"), "--no-progress"]
    code, _, err = _main(base, capsys)
    assert code == 2
    _assert_one_line_error(err, "dvg generate", "--image", "required", "HunyuanVideoImageToVideoPipeline")
    code, _, err = _main(base + ["--image", str(image), "--negative-prompt", "blurry", "--true-cfg-scale", "3"], capsys)
    assert code == 2
    _assert_one_line_error(err, "dvg generate", "--negative-prompt", "one video per call")

    code, out, err = _main(base + ["--image", image, "--seed", "3", "--report", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pipeline"] == "HunyuanVideoImageToVideoPipeline" and report["seed"] == 3
    assert report["prompts"] == ["a horse galloping", "a quiet lake"]
    samples = report["dvg_report"]["samples"]
    assert len(samples) == 2 and all(s["stage_shapes"][-1] == [5, 16, 16] for s in samples)
    assert all(0 < s["token_step_ratio"] < 1 for s in samples)
    assert "video 1:" in out
    import imageio.v3 as iio
    for i in range(2):
        # latent_concat: the pipeline drops the 4 pixel frames decoded from the conditioning frame
        assert iio.imread(tmp_path / f"i2v_{i}.mp4", plugin="FFMPEG").shape == (17 - 4, 128, 128, 3)


def test_generate_hunyuan_video_i2v_token_replace_with_baseline(saved_hv_i2v, tmp_path, capsys, monkeypatch):
    pytest.importorskip("dvg_engine.engine")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = _start_image(tmp_path / "start.png")
    code, out, err = _main(["generate", "--model", saved_hv_i2v["token_replace"], "--image", image, "--prompt",
                            "a red fox", *GEOMETRY, "--baseline", "--report", str(tmp_path / "r.json"),
                            "--out", str(tmp_path / "fox.mp4"), "--no-progress"], capsys)
    assert code == 0, err
    for name in ("fox.mp4", "fox_baseline.mp4", "fox_compare.mp4"):
        assert (tmp_path / name).is_file(), name
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pipeline"] == "HunyuanVideoImageToVideoPipeline"
    assert report["speedup"] == pytest.approx(report["time_s"]["baseline"] / report["time_s"]["dvg"])
    assert report["dvg_report"]["samples"][0]["stage_shapes"][-1] == [5, 16, 16]
    assert "baseline" in out
    import imageio.v3 as iio
    dvg = iio.imread(tmp_path / "fox.mp4", plugin="FFMPEG")
    baseline = iio.imread(tmp_path / "fox_baseline.mp4", plugin="FFMPEG")
    # token_replace keeps every frame (latent_concat drops the first 4, as diffusers does)
    assert dvg.shape == baseline.shape == (17, 128, 128, 3)


@pytest.mark.parametrize("model, tiny_name, geometry, small", [
    ("tiny-i2v", "hunyuan-video-i2v", GEOMETRY, dict(num_attention_heads=2, num_layers=1, num_single_layers=1)),
    ("tiny-1.5-i2v", "hunyuan-video-1.5-i2v", ["--frames", "17", "--steps", "6"], dict(num_layers=1, target_size=64)),
])
def test_generate_embedded_image_to_video_models(model, tiny_name, geometry, small, tmp_path, capsys, monkeypatch):
    """`--model tiny-i2v` / `tiny-1.5-i2v` build the embedded I2V pipelines (shrunk here for speed)."""
    pytest.importorskip("dvg_engine.engine")
    from dvg_engine import tiny
    built = []
    real = tiny.build_tiny_pipeline

    def small_builder(name, **kwargs):
        built.append((name, kwargs))
        return real(name, **kwargs, **small)
    monkeypatch.setattr(tiny, "build_tiny_pipeline", small_builder)
    image = _start_image(tmp_path / "start.png")
    code, _, err = _main(["generate", "--model", model, "--image", image, "--prompt", "a red fox", *geometry,
                          "--report", str(tmp_path / "r.json"), "--out", str(tmp_path / "v.mp4"), "--no-progress"],
                         capsys)
    assert code == 0, err
    import torch
    assert built == [(tiny_name, {"dtype": torch.float32})]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pipeline"] == cli.EMBEDDED_MODELS[model] and report["model"] == model
    assert (tmp_path / "v.mp4").is_file() and 0 < report["dvg_report"]["samples"][0]["token_step_ratio"] < 1
