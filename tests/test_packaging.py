"""Packaging: pyproject.toml installs every package folder, and the trainer works under both of its names (`training`
in a checkout, `ddpm_plugin_training` installed)."""

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_installed():
    config = _setuptools()
    on_disk = {
        ".".join(("ddpm_plugin", *p.parent.relative_to(REPO / "ddpm_plugin").parts))
        for p in (REPO / "ddpm_plugin").rglob("__init__.py")
    }
    assert sorted(config["packages"]) == sorted(on_disk | {"ddpm_plugin_training"})
    assert config["package-dir"] == {"ddpm_plugin_training": "training"}
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"ddpm-train": "ddpm_plugin_training.cli:main"}


def test_training_imports_itself_relatively():
    """`from training.x import ...` inside the trainer would break the installed `ddpm_plugin_training`."""
    for path in sorted((REPO / "training").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] != "training", f"{path.name}: from {node.module} import ..."
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "training" for a in node.names), f"{path.name}: import training"
