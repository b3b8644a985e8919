"""Packaging: environment.yml and pyproject.toml pin the same packages at the same versions;
one version; the extras split; the notebooks shipped as package data; the license; .env kept
out of git and the image. The wheel itself, installed and run: tests/integration/test_wheel.py."""

from __future__ import annotations

import ast
import re
import tomllib

import yaml

import marketstream
from marketstream.resources import NOTEBOOKS, notebook_dir
from marketstream.settings import OPTIONS, PROJECT_ROOT

PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _pins(specs: list[str]) -> dict[str, str]:
    pins = {}
    for spec in specs:
        if "==" in spec:
            name, version = spec.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted.update(_pins(extra))
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip_section) == wanted


def test_every_dependency_is_pinned():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [
        s for extra in project["optional-dependencies"].values() for s in extra
    ]
    assert all("==" in s for s in specs), [s for s in specs if "==" not in s]


def _names(specs: list[str]) -> set[str]:
    return {re.split(r"[=<>\[ ]", spec, maxsplit=1)[0].lower() for spec in specs}


def test_the_version_has_one_source():
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "marketstream.__version__"
    }
    assert re.fullmatch(r"\d+\.\d+\.\d+", marketstream.__version__)
    compose = (PROJECT_ROOT / "docker-compose.yml").read_text()
    assert marketstream.__version__ not in compose  # the image tag is not a second copy


def test_the_default_install_is_what_make_demo_needs():
    default = _names(PROJECT["dependencies"])
    assert {"papermill", "ipykernel", "kafka-python", "duckdb", "python-dotenv"} <= default
    assert {"jupyterlab", "voila", "flask", "granian", "anywidget"}.isdisjoint(default)
    extras = PROJECT["optional-dependencies"]
    assert {"flask", "granian"} <= _names(extras["api"])
    assert "voila" in _names(extras["voila"]) and "jupyterlab" in _names(extras["lab"])


def test_make_setup_installs_every_extra_but_jupyterlab_and_environment_yml_all():
    """make setup: what make demo and make test need; JupyterLab with make lab only."""
    extras = set(PROJECT["optional-dependencies"])
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    make = re.search(r"^EXTRAS \?= (\S+)$", makefile, re.M)
    assert make and set(make.group(1).split(",")) == extras - {"lab"}
    assert re.search(r"^LAB_EXTRAS := \$\(EXTRAS\),lab$", makefile, re.M)
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    [editable] = [s for s in pip_section if s.startswith("-e ")]
    assert set(editable.split("[")[1].rstrip("]").split(",")) == extras


def test_the_docker_image_leaves_jupyterlab_out():
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    [extras] = re.findall(r"^ARG EXTRAS=(\S+)$", dockerfile, re.M)
    assert "lab" not in extras.split(",") and '"/app[${EXTRAS}]"' in dockerfile


def test_the_notebooks_are_package_data_from_the_top_level_folder():
    shipped = notebook_dir()
    assert shipped.resolve() == (PROJECT_ROOT / "notebooks").resolve()
    assert sorted(p.stem for p in shipped.glob("*.ipynb")) == sorted(NOTEBOOKS)
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["marketstream"]
    assert "notebooks/*.ipynb" in data


def test_no_module_resolves_against_the_source_checkout():
    """PROJECT_ROOT is site-packages once installed: run-time code uses settings.home()."""
    users = []
    for path in (PROJECT_ROOT / "lib").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        if "PROJECT_ROOT" in names and path.name != "settings.py":
            users.append(path.name)
    assert users == []


def test_license_and_urls():
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    assert (PROJECT_ROOT / "LICENSE").read_text().startswith("MIT License")
    assert PROJECT["urls"]


def test_dotenv_stays_out_of_git_and_the_image_and_its_example_names_real_settings():
    assert ".env" in (PROJECT_ROOT / ".gitignore").read_text().split()
    assert ".env" in (PROJECT_ROOT / ".dockerignore").read_text().split()
    example = (PROJECT_ROOT / ".env.example").read_text()
    names = set(re.findall(r"^# ([A-Z_]+)=", example, re.M))
    assert {"KAFKA_SASL_PASSWORD", "KAFKA_SSL_CERTFILE", "KAFKA_REPLICATION_FACTOR"} <= names
    assert names <= {o.env for o in OPTIONS}
