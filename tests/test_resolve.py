"""`ddpm_plugin.resolve`: bundled names, local folders and Hub ids (from a hand-built offline Hub cache), the policy
that says which may be loaded, and the errors."""

import numpy as np
import pytest
import torch

import ddpm_plugin.pretrained as pretrained
from ddpm_plugin import DDPMUNet2DModel, GaussianDDPMScheduler, PixelDDPMPipeline, save_for_hub
from ddpm_plugin.resolve import (
    CLI_POLICY,
    ModelNotAllowedError,
    ModelPolicy,
    load_pipeline,
    model_folder,
    resolve_model,
)


def _pixel_pipeline() -> PixelDDPMPipeline:
    torch.manual_seed(0)
    unet = DDPMUNet2DModel(
        sample_size=8, in_channels=1, model_channels=8, channel_mult=(1,), norm_num_groups=4, attention_resolutions=()
    )
    pipe = PixelDDPMPipeline(
        unet=unet, scheduler=GaussianDDPMScheduler(num_train_timesteps=6), default_num_inference_steps=3
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(pipe) -> np.ndarray:
    return pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np").images


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny pixel pipeline, saved with `save_pretrained` under `models/pixel`, and its images."""
    root = tmp_path_factory.mktemp("resolve")
    pipe = _pixel_pipeline()
    pipe.save_pretrained(root / "models" / "pixel")
    return root, _images(pipe)


def _lay_into_hub_cache(cache, repo_id: str, save) -> None:
    """The standard Hub cache layout: models--org--name/snapshots/<rev>/..., refs/main holding <rev>."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    save(repo_dir / "snapshots" / revision)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hub cache, read offline (the variable and huggingface_hub's constants, read at its import)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


# ---------------------------------------------------------------------------------------------------- resolving
@pytest.mark.parametrize("name", ["latent", "bundled:latent", " bundled:latent ", "pixel", "bundled:pixel"])
def test_bundled_names_have_one_canonical_spelling(name):
    model = resolve_model(name)
    kind = name.strip().removeprefix("bundled:")
    assert model.kind == "bundled" and model.display_name == f"bundled:{kind}" and model.bundled_kind == kind
    assert model.path == pretrained.PRETRAINED_DIR / f"mnist-{kind}"
    assert model_folder(model) == model.path


def test_bundled_spellings_load_the_same_pipeline():
    short, canonical = load_pipeline("pixel"), load_pipeline("bundled:pixel")
    assert type(short) is type(canonical) is PixelDDPMPipeline
    for (key, a), b in zip(short.unet.state_dict().items(), canonical.unet.state_dict().values()):
        assert torch.equal(a, b), key


def test_folder_resolves_and_loads(saved):
    root, images = saved
    model = resolve_model(str(root / "models" / "pixel"))
    assert (model.kind, model.path, model.repo_id) == ("folder", root / "models" / "pixel", None)
    assert model.display_name == str(root / "models" / "pixel")  # as given
    pipe = load_pipeline(str(root / "models" / "pixel"), torch_dtype=torch.float64)
    assert type(pipe) is PixelDDPMPipeline and pipe.unet.dtype == torch.float64
    np.testing.assert_allclose(_images(pipe.to(dtype=torch.float32)), images, atol=1e-6)


def test_a_bundled_name_wins_over_a_folder_of_that_name(saved, monkeypatch):
    root, _ = saved
    (root / "latent").mkdir(exist_ok=True)
    monkeypatch.chdir(root)
    assert resolve_model("latent").kind == "bundled"
    assert resolve_model("./latent").kind == "folder"


def test_hub_id_resolves_without_network():
    model = resolve_model("org/name")
    assert (model.kind, model.repo_id, model.display_name, model.path) == ("hub", "org/name", "org/name", None)


@pytest.mark.parametrize(
    "name, message",
    [
        ("", "no model given"),
        ("bundled:cifar", r"'bundled:cifar' is not a bundled model; the bundled models are \['bundled:latent'"),
        ("./nowhere", "neither a bundled model, an existing folder nor a Hub id"),
        ("/no/such/folder", "neither a bundled model"),
        ("a/b/c", "neither a bundled model"),
        (
            "cifar",
            r"'cifar' is neither .* give a bundled model \('bundled:latent', 'bundled:pixel'\), a local folder ",
        ),
    ],
)
def test_bad_names_are_named_with_what_is_allowed(name, message):
    with pytest.raises(ValueError, match=message):
        resolve_model(name)


def test_a_file_is_not_a_model_folder(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file, not a model folder"):
        resolve_model(str(tmp_path / "model.safetensors"))


def test_a_folder_without_a_pipeline_is_refused_by_load_pipeline(tmp_path):
    _pixel_pipeline().unet.save_pretrained(tmp_path / "unet")
    assert resolve_model(str(tmp_path / "unet")).kind == "folder"  # a model folder: fine for --init_from
    with pytest.raises(ValueError, match="is not a pipeline: it has no model_index.json"):
        load_pipeline(str(tmp_path / "unet"))


# ---------------------------------------------------------------------------------------------------- policy
def test_policy_refusals_name_the_value_and_what_is_allowed(saved, tmp_path):
    root, _ = saved
    folder = str(root / "models" / "pixel")
    no_bundled = ModelPolicy(allow_bundled=False)
    with pytest.raises(ModelNotAllowedError, match=r"the bundled model 'latent' is not allowed here; give a local "):
        resolve_model("latent", no_bundled)
    with pytest.raises(ModelNotAllowedError, match=r"the Hub id 'org/name' is not allowed here; give a bundled model"):
        resolve_model("org/name", ModelPolicy(allow_hub=False))
    with pytest.raises(
        ModelNotAllowedError, match=r"the folder .* is not allowed here; give a bundled model .* or a Hub"
    ):
        resolve_model(folder, ModelPolicy(allowed_dirs=()))
    nothing = ModelPolicy(allow_bundled=False, allow_hub=False, allowed_dirs=())
    with pytest.raises(ModelNotAllowedError, match="give nothing"):
        resolve_model("pixel", nothing)
    assert CLI_POLICY.allowed() == (
        "a bundled model ('bundled:latent', 'bundled:pixel'), a local folder or a Hub id 'owner/name'"
    )


def test_allowed_dirs_hold_folders_and_symlinks_cannot_leave_them(saved, tmp_path):
    root, _ = saved
    inside = ModelPolicy(allowed_dirs=(root / "models",))
    assert resolve_model(str(root / "models" / "pixel"), inside).kind == "folder"
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ModelNotAllowedError, match=r"give a bundled model .*, a folder inside \["):
        resolve_model(str(tmp_path / "elsewhere"), inside)
    link = root / "models" / "link-out"
    if not link.exists():
        link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ModelNotAllowedError, match="link-out"):
        resolve_model(str(link), inside)


def test_policy_pipeline_classes(saved):
    root, _ = saved
    latent_only = ModelPolicy(pipeline_classes=("LatentDDPMPipeline",))
    with pytest.raises(ModelNotAllowedError, match=r"holds a 'PixelDDPMPipeline' pipeline; allowed here: \['Latent"):
        load_pipeline(str(root / "models" / "pixel"), latent_only)
    assert type(load_pipeline(str(root / "models" / "pixel"), ModelPolicy(pipeline_classes=("PixelDDPMPipeline",))))


# ---------------------------------------------------------------------------------------------------- Hub ids
def test_hub_id_from_the_offline_cache(saved, offline_hub):
    root, images = saved
    pipe = _pixel_pipeline()
    _lay_into_hub_cache(offline_hub, "org/pixel", pipe.save_pretrained)
    # a repository written by save_for_hub (with model code) loads with the installed classes, its code never run
    _lay_into_hub_cache(offline_hub, "org/shared", lambda folder: save_for_hub(pipe, folder, sample_grid=False))
    for repo_id in ("org/pixel", "org/shared"):
        model = resolve_model(repo_id)
        assert model_folder(model).is_relative_to(offline_hub / f"models--{repo_id.replace('/', '--')}" / "snapshots")
        loaded = load_pipeline(repo_id)
        assert type(loaded) is PixelDDPMPipeline and type(loaded.unet) is DDPMUNet2DModel
        np.testing.assert_allclose(_images(loaded), images, atol=1e-6)


def test_hub_id_not_in_the_offline_cache_is_a_clear_error(offline_hub):
    with pytest.raises(ValueError, match=r"cannot load the Hub id 'org/missing': the Hub is offline here"):
        load_pipeline("org/missing")


def test_hub_size_cap(offline_hub):
    _lay_into_hub_cache(offline_hub, "org/pixel", _pixel_pipeline().save_pretrained)
    model = resolve_model("org/pixel")
    assert model_folder(model, ModelPolicy(max_hub_bytes=10**9)).is_dir()
    with pytest.raises(ModelNotAllowedError, match=r"'org/pixel' holds 0\.\d MB of model files; at most 0\.0 MB"):
        model_folder(model, ModelPolicy(max_hub_bytes=1000))
