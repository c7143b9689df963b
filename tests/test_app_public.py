# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""The app as a hostile visitor meets it: gradio_client and raw HTTP against `app.py` launched in-process on a free
port, under operator settings from `DDPM_APP_*` variables (tiny random pipelines, an offline hand-built Hub cache);
and the helpers behind it (`ddpm_plugin.app.access`, `uploads`, `limits`, `jobs`) with an autospec'd `HfApi`."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from unittest.mock import create_autospec

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from test_app import free_port, read_png, sample_args, save_tiny_pipelines  # noqa: E402

from ddpm_plugin import DDPMUNet2DModel, GaussianDDPMScheduler, PixelDDPMPipeline  # noqa: E402

UNAVAILABLE = "This model is not available here"
SETTINGS_ENV = {
    "DDPM_APP_MAX_SECONDS": "120",  # `test_every_job_has_a_time_limit` lowers it
    "DDPM_APP_MAX_COMPUTE": "2000000",  # the 32x32 model: 1 image x 1000 steps fits, 2 x 1000 do not
    "DDPM_APP_MAX_UPLOAD_MB": "1",
    "DDPM_APP_MAX_UPLOAD_PIXELS": "1000000",
    "DDPM_APP_CACHE_SIZE": "2",
}


def save_slow_pipeline(folder: str) -> str:
    """A 32x32 random pixel pipeline with T = 1000, about 0.07 s per step on one core: runs that last."""
    torch.manual_seed(0)
    unet = DDPMUNet2DModel(
        sample_size=32,
        in_channels=1,
        model_channels=32,
        channel_mult=(1, 2, 2),
        layers_per_block=2,
        attention_resolutions=(8,),
        norm_num_groups=8,
    )
    PixelDDPMPipeline(unet=unet, scheduler=GaussianDDPMScheduler(num_train_timesteps=1000)).save_pretrained(folder)
    return folder


def build_hub_cache(root: Path, repo_id: str, files: dict[str, bytes], revision: str = "0" * 40) -> Path:
    """A Hugging Face cache holding `files` of `repo_id` at `revision` (refs/main points at it), as the Hub writes."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    for name, content in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(content)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("public")
    allowed = root / "allowed"
    folders = save_tiny_pipelines(allowed)
    folders["slow"] = save_slow_pipeline(str(allowed / "slow"))
    outside = save_tiny_pipelines(root / "outside")  # real pipelines the operator did not offer
    folders["outside"] = outside["pixel"]
    os.symlink(outside["pixel"], allowed / "link_out")  # a link inside an allowed folder that leaves it
    folders["root"], folders["allowed"] = str(root), str(allowed)
    # a damaged model in the Hub cache: its unet weights are not safetensors
    pixel = Path(folders["pixel"])
    files = {str(p.relative_to(pixel)): p.read_bytes() for p in pixel.rglob("*") if p.is_file()}
    files["unet/diffusion_pytorch_model.safetensors"] = b"not safetensors"
    folders["hub_cache"] = str(root / "hub")
    build_hub_cache(root / "hub", "someone/broken", files)
    return folders


@pytest.fixture(scope="module")
def server(models):
    """The app with `SETTINGS_ENV` and `DDPM_APP_MODEL_DIRS` = the allowed folder; yields (app module, url)."""
    from huggingface_hub import constants

    env = {**SETTINGS_ENV, "DDPM_APP_MODEL_DIRS": models["allowed"], "HF_HUB_OFFLINE": "1"}
    previous = {name: os.environ.get(name) for name in env}
    previous_cache = constants.HF_HUB_CACHE
    os.environ.update(env)
    constants.HF_HUB_CACHE = models["hub_cache"]
    import app

    demo = app.build_demo(default_model=models["pixel"])
    port = free_port()
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield app, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        constants.HF_HUB_CACHE = previous_cache
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def client(server):
    return Client(server[1], verbose=False)


def new_client(server) -> Client:
    return Client(server[1], verbose=False)


def wait_for_outputs(job, count: int = 1, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(job.outputs()) < count and not job.done() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(job.outputs()) >= count and not job.done(), "the run did not start streaming"


def cpu_seconds(window: float = 0.5) -> float:
    """CPU time this process (the server runs in it) used over `window` seconds of wall time."""
    start = time.process_time()
    time.sleep(window)
    return time.process_time() - start


def wait_until_idle(timeout: float) -> bool:
    """Polls until two windows in a row use almost no CPU (the test thread itself sleeps)."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline:
        quiet = quiet + 1 if cpu_seconds() < 0.05 else 0
        if quiet >= 2:
            return True
    return False


def error_of(call) -> str:
    with pytest.raises(Exception) as info:  # noqa: PT011 (the message is what is checked)
        call()
    return str(info.value)


# ---------------------------------------------------------------------------------------------------- models
def test_server_paths_all_get_one_message_that_reveals_nothing(client, models):
    names = [
        "/etc",
        "/etc/shadow",
        "/no/such/folder",
        "~root",
        "~",
        "../outside/pixel",
        models["outside"],
        "link_out",
        os.path.join(models["allowed"], "link_out"),
        os.path.join(models["allowed"], "..", "outside", "pixel"),
    ]
    messages = {name: error_of(lambda n=name: client.predict(**sample_args(n, steps=2))) for name in names}
    assert set(messages.values()) == {messages["/etc"]}, messages
    message = messages["/etc"]
    assert UNAVAILABLE in message
    assert models["root"] not in message and "/etc" not in message and "/root" not in message


def test_allowed_folders_load_by_name_or_path(client, models):
    for name in ("latent", models["latent"]):
        *_, status = client.predict(**sample_args(name, steps=2, preview_every=0))
        assert "Done" in status


def test_damaged_hub_cache_message_names_no_server_path(client, models):
    message = error_of(lambda: client.predict(**sample_args("someone/broken", steps=2)))
    assert "someone/broken" in message
    assert models["hub_cache"] not in message and "snapshots" not in message, message


def test_cache_is_bounded(server, client, models):
    app = server[0]
    for name in ("pixel", "latent", "long", "pixel"):
        client.predict(**sample_args(name, steps=2, preview_every=0))
    assert len(app.CACHE.keys()) == 2 and app.CACHE.keys()[-1] == os.path.realpath(models["pixel"])


def test_compute_budget_is_a_clear_error(client, models):
    message = error_of(lambda: client.predict(**sample_args(models["slow"], steps=1000, batch_size=2)))
    assert "1024 pixels x 2 image(s) x 1000 steps = 2,048,000" in message and "limit of 2,000,000" in message


# ---------------------------------------------------------------------------------------------------- queue
def test_run_routes_refuse_queued_endpoints_but_not_stop(server, models):
    url = server[1]
    data = {"data": [models["pixel"], 1, None, 5, 0]}
    assert httpx.post(url + "gradio_api/run/forward_process", json=data, timeout=60).status_code == 404
    stop = httpx.post(url + "gradio_api/run/stop", json={"data": []}, timeout=60)
    assert stop.status_code == 200 and stop.json()["data"] == ["Nothing is running."]


def test_forward_process_gets_through_while_two_runs_stream(server, models):
    runners = [new_client(server), new_client(server)]
    runs = [c.submit(**sample_args(models["slow"], steps=1000, batch_size=1, preview_every=5)) for c in runners]
    try:
        for run in runs:
            wait_for_outputs(run)
        probe = new_client(server)
        start = time.perf_counter()
        *_, info = probe.predict(
            model=models["pixel"], digit_index=1, upload=None, timestep=5, seed=0, api_name="/forward_process"
        )
        latency = time.perf_counter() - start
        print(f"forward process while two runs stream: {latency:.2f} s")
        assert "t = 5" in info
        assert not any(run.done() for run in runs)  # it did not wait for a sampling slot
    finally:
        for c in runners:
            c.predict(api_name="/stop")
    assert all("Stopped at step" in run.result(timeout=60)[5] for run in runs)


def test_one_client_cannot_fill_the_queue_and_stop_gets_through(server, models):
    hog = new_client(server)
    jobs = [hog.submit(**sample_args(models["slow"], steps=1000, batch_size=1, preview_every=50)) for _ in range(35)]
    deadline = time.monotonic() + 60  # the submits race: whichever joins first runs, the other 34 are turned away
    while sum(job.done() for job in jobs) < 34 and time.monotonic() < deadline:
        time.sleep(0.05)
    running = [job for job in jobs if not job.done()]
    refused = sum("Queue is full" in str(job.exception()) for job in jobs if job.done())
    other = new_client(server)
    try:
        assert other.predict(api_name="/stop") == "Nothing is running."
        *_, info = other.predict(
            model=models["pixel"], digit_index=1, upload=None, timestep=5, seed=0, api_name="/forward_process"
        )
        assert "t = 5" in info
        assert refused == 34 and len(running) == 1  # one run per visitor session; the rest was turned away
    finally:
        hog.predict(api_name="/stop")
    assert "Stopped at step" in running[0].result(timeout=60)[5]


def test_two_clients_share_the_server_fairly(server, models):
    hog, other = new_client(server), new_client(server)
    long_runs = [hog.submit(**sample_args(models["slow"], steps=1000, batch_size=1, preview_every=5))]
    try:
        wait_for_outputs(long_runs[0])
        long_runs += [
            hog.submit(**sample_args(models["slow"], steps=1000, batch_size=1, preview_every=5)) for _ in "ab"
        ]
        # refused while the first run streams (one model job per session); checked before anything stops it, since a
        # join is re-checked for up to 1 s and would be let in once the first run has ended
        for run in long_runs[1:]:
            with pytest.raises(Exception, match="Queue is full"):
                run.result(timeout=60)
        assert not long_runs[0].done()
        *_, status = other.predict(**sample_args(models["pixel"], steps=10, preview_every=0))
        assert "Done" in status
        assert not long_runs[0].done()  # the other client did not wait for the hog's runs
        assert "Nothing is running." == other.predict(api_name="/stop")  # Stop is per session
        assert not long_runs[0].done()
    finally:
        hog.predict(api_name="/stop")
    assert "Stopped at step" in long_runs[0].result(timeout=60)[5]


# ---------------------------------------------------------------------------------------------------- jobs
CLIENT_SCRIPT = """
import sys, time
from gradio_client import Client
client = Client(sys.argv[1], verbose=False)
job = client.submit({call}, api_name={api!r})
time.sleep(600)
"""


@pytest.mark.parametrize(
    ("api", "call"),
    [
        ("/likelihood", "sys.argv[2], 0, 1, None, 1000, True, 0"),  # 1 digit x 1000 steps: about 70 s
        ("/sample", "sys.argv[2], 'DDPM ancestral', 1000, 0, 1, 0"),  # no previews: one long step of gradio's
    ],
)
def test_jobs_end_when_their_client_leaves(server, models, api, call):
    assert wait_until_idle(60)
    script = textwrap.dedent(CLIENT_SCRIPT.format(call=call, api=api))
    child = subprocess.Popen([sys.executable, "-c", script, server[1], models["slow"]])
    try:
        deadline = time.monotonic() + 60
        while cpu_seconds() < 0.2 and time.monotonic() < deadline:
            pass
        assert time.monotonic() < deadline, "the job never started"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert wait_until_idle(40), "the server is still busy 40 s after its client left"


@pytest.fixture
def short_time_limit(server):
    app = server[0]
    previous = app.SETTINGS
    app.configure(dataclasses.replace(previous, max_seconds=3))
    yield
    app.configure(previous)


def test_every_job_has_a_time_limit(client, models, short_time_limit):
    *_, grid, _, download, status = client.predict(
        **sample_args(models["slow"], steps=1000, batch_size=1, preview_every=0)
    )
    assert "Stopped by the time limit of 3 s" in status and grid is not None
    # model, first digit, count, upload, timesteps, full chain, seed: 1 digit x 1000 steps
    message = error_of(lambda: client.predict(models["slow"], 0, 1, None, 1000, True, 0, api_name="/likelihood"))
    assert "time limit of 3 s" in message


def test_runs_leave_no_temp_folders(client, models):
    def folders():
        return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("ddpm_app_")}

    before = folders()
    for seed in range(3):
        *_, download, status = client.predict(**sample_args(models["pixel"], seed=seed, steps=2, preview_every=0))
        assert "Done" in status and read_png(download).size
    assert folders() - before == set()


# ---------------------------------------------------------------------------------------------------- inputs
@pytest.mark.parametrize(
    ("field", "value"),
    [("seed", "abc"), ("seed", None), ("seed", [1, 2]), ("steps", "abc"), ("steps", [1]), ("batch_size", None)],
)
def test_wrong_types_name_the_field(client, models, field, value):
    args = sample_args(models["pixel"], steps=2)
    args[field] = value
    message = error_of(lambda: client.predict(**args))
    assert field.replace("_", " ") in message and "whole number" in message, message


def join_raw(url: str, fn_index: int, body_text: str) -> dict:
    """Joins the queue with a raw JSON body (NaN literals survive) and returns the final SSE message."""
    session = "raw" + os.urandom(4).hex()
    body = body_text.replace("SESSION", session).replace("FN", str(fn_index))
    response = httpx.post(url + "gradio_api/queue/join", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    with httpx.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session}, timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("no result")


def test_nan_seed_is_a_named_error(client, server, models):
    fn_index = next(i for i, dep in enumerate(client.config["dependencies"]) if dep.get("api_name") == "sample")
    model = json.dumps(models["pixel"])
    body = '{"data": [MODEL, "DDPM ancestral", 2, NaN, 1, 0], "fn_index": FN, "session_hash": "SESSION"}'
    message = join_raw(server[1], client.config["dependencies"][fn_index]["id"], body.replace("MODEL", model))
    assert message["success"] is False
    assert "seed must be a whole number" in (message["output"].get("error") or ""), message


# ---------------------------------------------------------------------------------------------------- uploads
def forward_upload(client, models, path: str):
    return client.predict(
        model=models["pixel"], digit_index=0, upload=handle_file(path), timestep=0, seed=0, api_name="/forward_process"
    )


def test_huge_image_is_refused_from_its_header(client, models, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(bomb)  # a few KB on disk, 144 million pixels
    assert bomb.stat().st_size < 100_000
    message = error_of(lambda: forward_upload(client, models, str(bomb)))
    assert "12000x12000" in message and "1,000,000 pixels" in message


def test_large_file_is_refused(client, models, tmp_path):
    big = tmp_path / "big.png"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8))
    image.save(big)
    assert big.stat().st_size > 1_000_000
    with pytest.raises(Exception):  # noqa: B017 (gradio refuses the upload itself: HTTP 413)
        forward_upload(client, models, str(big))


def test_16_bit_and_transparent_uploads_are_converted(client, models, tmp_path):
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((28, 28), 128 * 257, dtype=np.uint16)).save(wide)  # mid-grey in 16 bits
    x0, *_ = forward_upload(client, models, str(wide))
    assert np.all(read_png(x0)[5:-5, 5:-5] == 128)
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (28, 28), (255, 255, 255, 0)).save(clear)  # white but fully transparent
    x0, *_ = forward_upload(client, models, str(clear))
    assert np.all(read_png(x0) == 0)


def test_mode_conversion():
    from ddpm_plugin.app.uploads import to_model_mode

    ramp = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)  # 0, 257, ..., 65535
    gray = np.asarray(to_model_mode(Image.fromarray(ramp), 1))
    np.testing.assert_array_equal(gray, np.arange(256, dtype=np.uint8).reshape(16, 16))
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)
    rgba[0, 1] = (255, 255, 255, 0)
    rgba[1, 0] = (255, 255, 255, 128)
    out = np.asarray(to_model_mode(Image.fromarray(rgba, "RGBA"), 3))
    np.testing.assert_array_equal(out[0, 0], (200, 100, 50))
    np.testing.assert_array_equal(out[0, 1], (0, 0, 0))
    assert np.all(np.abs(out[1, 0].astype(int) - 128) <= 1)  # half over black
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.info["transparency"] = 1
    np.testing.assert_array_equal(np.asarray(to_model_mode(palette, 3)), [[(255, 0, 0), (0, 0, 0)]])
    cmyk = Image.new("CMYK", (1, 1), (0, 0, 0, 0))  # no ink: white
    assert np.asarray(to_model_mode(cmyk, 1)).tolist() == [[255]]
    la = Image.fromarray(np.array([[[200, 255], [200, 0]]], np.uint8), "LA")
    assert np.asarray(to_model_mode(la, 1)).tolist() == [[200, 0]]
    assert to_model_mode(Image.new("1", (3, 3), 1), 1).mode == "L"


# ---------------------------------------------------------------------------------------------------- helpers
def test_resolve_visitor_model(models):
    from ddpm_plugin.app.access import ModelNotAvailable, resolve_visitor_model, visitor_policy
    from ddpm_plugin.app.limits import AppSettings

    policy = visitor_policy(AppSettings(model_dirs=(models["allowed"],)))
    assert resolve_visitor_model("bundled:pixel", policy).kind == "bundled"
    model = resolve_visitor_model("pixel", policy)  # the allowed folder's `pixel`, not the bundled model
    assert model.kind == "folder" and model.path == Path(os.path.realpath(models["pixel"]))
    assert resolve_visitor_model(models["pixel"], policy).path == model.path
    assert resolve_visitor_model("owner/name", policy).kind == "hub"
    names = ("", "~", "~root", "/etc", "/etc/shadow", "link_out", "../outside/pixel", models["outside"], "a/b/c", None)
    for name in (*names, "pixel\x00"):
        with pytest.raises(ModelNotAvailable):
            resolve_visitor_model(name, policy)
    with pytest.raises(ModelNotAvailable):
        resolve_visitor_model("pixel", visitor_policy(AppSettings()))  # no folders allowed by default


def test_scrub_paths():
    from ddpm_plugin.app.access import scrub_paths

    text = "Could not load '/home/op/.cache/huggingface/hub/models--a--b/snapshots/abc/unet': see C:\\x\\y.txt"
    assert scrub_paths(text) == "Could not load '…/unet': see …/y.txt"
    assert scrub_paths("the Hub id 'owner/name' at https://huggingface.co/owner/name") == (
        "the Hub id 'owner/name' at https://huggingface.co/owner/name"
    )


def model_info(files: dict[str, int | None], sha: str = "1" * 40):
    from huggingface_hub.hf_api import ModelInfo

    return ModelInfo(id="owner/name", sha=sha, siblings=[{"rfilename": n, "size": s} for n, s in files.items()])


REPO_FILES = {
    "model_index.json": 300,
    "unet/config.json": 900,
    "unet/diffusion_pytorch_model.safetensors": 40_000_000,
    "unet/diffusion_pytorch_model.bin": 40_000_000,
    "pipeline.py": 2_000,
    "samples/huge.tar": 10_000_000_000,
    "README.md": 1_000,
}


def autospec_api():
    from huggingface_hub import HfApi

    return create_autospec(HfApi, instance=True)


def app_hub_policy(max_model_mb: float):
    """The policy the app loads visitors' models under (`access.visitor_policy`), with a Hub cap of `max_model_mb`."""
    from ddpm_plugin.app.access import visitor_policy
    from ddpm_plugin.app.limits import AppSettings

    return visitor_policy(AppSettings(max_model_mb=max_model_mb))


@pytest.fixture
def online(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def hub_folder(repo_id: str, policy, api, cache_dir) -> Path:
    """What the app does with a visitor's Hub id, up to the local folder it loads (`ddpm_plugin.resolve`)."""
    from ddpm_plugin.app.access import resolve_visitor_model
    from ddpm_plugin.resolve import model_folder

    return model_folder(resolve_visitor_model(repo_id, policy), policy, api=api, cache_dir=cache_dir)


def test_hub_download_takes_pipeline_files_only_under_the_cap(tmp_path, online):
    from ddpm_plugin.resolve import ModelNotAllowedError

    policy = app_hub_policy(max_model_mb=50)
    assert policy.hub_allow_patterns == ("*.json", "*.safetensors", "README.md")
    api = autospec_api()
    api.model_info.return_value = model_info(REPO_FILES)
    api.snapshot_download.return_value = str(tmp_path / "snap")
    assert hub_folder("owner/name", policy, api, tmp_path) == tmp_path / "snap"
    api.model_info.assert_called_once_with("owner/name", files_metadata=True)
    # at the revision whose sizes were checked; configs, safetensors and the card only (no .bin, code or archives)
    api.snapshot_download.assert_called_once_with(
        "owner/name", revision="1" * 40, allow_patterns=list(policy.hub_allow_patterns), cache_dir=tmp_path
    )
    # 40 MB of safetensors + configs + card: over a 40 MB cap, nothing is downloaded
    api = autospec_api()
    api.model_info.return_value = model_info(REPO_FILES)
    with pytest.raises(ModelNotAllowedError, match=r"'owner/name' holds 40.0 MB of model files; at most 40.0 MB"):
        hub_folder("owner/name", app_hub_policy(max_model_mb=40), api, tmp_path)
    api.snapshot_download.assert_not_called()
    # a repository that is not a diffusers pipeline is not downloaded either
    api = autospec_api()
    api.model_info.return_value = model_info({"config.json": 10, "model.safetensors": 10})
    with pytest.raises(ValueError, match="'owner/name' is not a pipeline: it has no model_index.json"):
        hub_folder("owner/name", policy, api, tmp_path)
    api.snapshot_download.assert_not_called()


def test_hub_sizes_missing_from_model_info_are_asked_for(tmp_path, online):
    from huggingface_hub.hf_api import RepoFile

    api = autospec_api()
    api.model_info.return_value = model_info({**REPO_FILES, "unet/diffusion_pytorch_model.safetensors": None})
    api.get_paths_info.return_value = [
        RepoFile(path="unet/diffusion_pytorch_model.safetensors", size=90_000_000, oid="x")
    ]
    with pytest.raises(ValueError, match="90.0 MB of model files"):
        hub_folder("owner/name", app_hub_policy(max_model_mb=50), api, tmp_path)
    api.get_paths_info.assert_called_once_with(
        "owner/name", ["unet/diffusion_pytorch_model.safetensors"], revision="1" * 40
    )
    api.snapshot_download.assert_not_called()


def test_offline_hub_reads_the_cache_without_asking_the_hub(tmp_path, monkeypatch):
    from ddpm_plugin.resolve import ModelNotAllowedError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = build_hub_cache(tmp_path, "owner/cached", {"model_index.json": b"{}", "unet/config.json": b"{}"})
    (snapshot / "pipeline.py").write_bytes(b"x" * 10_000)  # not a pipeline file: not counted against the cap
    api = autospec_api()
    assert hub_folder("owner/cached", app_hub_policy(max_model_mb=0.001), api, tmp_path) == snapshot
    with pytest.raises(ModelNotAllowedError, match="'owner/cached' holds 0.0 MB of model files; at most 0.0 MB"):
        hub_folder("owner/cached", app_hub_policy(max_model_mb=1e-6), api, tmp_path)
    with pytest.raises(ValueError, match="'owner/missing': the Hub is offline here"):
        hub_folder("owner/missing", app_hub_policy(max_model_mb=1), api, tmp_path)
    assert api.mock_calls == []


def test_pipeline_lru():
    from ddpm_plugin.app.access import PipelineLRU

    cache = PipelineLRU(2)
    loads = []

    def loader(key):
        return lambda: loads.append(key) or key.upper()

    assert [cache.get(k, loader(k)) for k in ("a", "b", "a", "c", "a", "b")] == ["A", "B", "A", "C", "A", "B"]
    assert loads == ["a", "b", "c", "b"] and cache.keys() == ["a", "b"]  # c went first: a was used after it


def test_settings_from_flags_and_environment():
    import argparse

    from ddpm_plugin.app.limits import AppSettings, add_arguments, settings_from_args

    env = {"DDPM_APP_MODEL_DIRS": os.pathsep.join(["/a", "/b"]), "DDPM_APP_MAX_SECONDS": "30"}
    assert AppSettings.from_env(env).model_dirs == ("/a", "/b") and AppSettings.from_env({}).model_dirs == ()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model-dir", "/c", "--model-dir", "/d", "--max-compute", "99"])
    settings = settings_from_args(args, env)
    assert settings.model_dirs == ("/c", "/d") and settings.max_compute == 99 and settings.max_seconds == 30
    # a flag of 0 (allowed for --max-preview-fps: no limit) wins over the environment too
    env["DDPM_APP_MAX_PREVIEW_FPS"] = "5"
    assert settings_from_args(parser.parse_args(["--max-preview-fps", "0"]), env).max_preview_fps == 0
    assert settings_from_args(parser.parse_args([]), env).max_preview_fps == 5
    with pytest.raises(ValueError, match="DDPM_APP_CACHE_SIZE='many' is not a valid int"):
        AppSettings.from_env({"DDPM_APP_CACHE_SIZE": "many"})
    with pytest.raises(ValueError, match="--max-seconds must be positive, got 0"):
        AppSettings(max_seconds=0)


def test_space_requirements_match_the_package():
    """requirements.txt (what a Space installs) is the package's dependencies plus its `app` extras."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    lines = (root / "requirements.txt").read_text().splitlines()
    required = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert sorted(required) == sorted(project["dependencies"] + project["optional-dependencies"]["app"])
