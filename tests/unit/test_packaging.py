"""environment.yml and pyproject.toml pin the same packages at the same versions."""

from __future__ import annotations

import tomllib

import yaml

from marketstream.settings import PROJECT_ROOT


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
