"""The built wheel, installed in a fresh venv outside the repository, runs the pipeline.

What it proves: a non-editable install finds its notebooks (package data, through
importlib.resources), writes its DuckDB file, logs and executed notebooks into the
working directory it is run from, and puts nothing into site-packages. The venv has no
system site-packages and no PYTHONPATH, so nothing of the checkout or of the test venv
leaks in: every dependency is installed from wheels.

Time: pip's HTTP cache does not keep the registry's answers on this machine (nothing was
stored after a full install), so the dependencies' wheels are kept in a wheelhouse of our
own, ``.cache/wheels`` (``make distclean`` deletes it): the first run downloads them and
later ones install offline. Measured on the 2-core machine while a CI run was going, for
the default install (~150 packages, no JupyterLab): building the wheel 4.5-7.8 s;
installing it with its dependencies 42.8 s with the download, 40.5 s offline (unpacking
dominates; a plain ``pip install`` from the registry took 56 s); the pipeline 36.9 s (57 s
while PYTHONDONTWRITEBYTECODE made each of the four kernels compile pandas and plotly
again, so it is not passed on). The whole test: 99-118 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from marketstream import store
from marketstream.settings import OPTIONS, PROJECT_ROOT, Settings

#: Downloaded dependency wheels, kept between runs (MARKETSTREAM_TEST_WHEELHOUSE: elsewhere).
WHEELHOUSE = Path(
    os.environ.get("MARKETSTREAM_TEST_WHEELHOUSE") or PROJECT_ROOT / ".cache" / "wheels"
)

#: What a source distribution of the kit holds (the rest of the checkout is not the package).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "lib", "api", "notebooks")

pytestmark = pytest.mark.usefixtures("no_stray_children")


def run(cmd: list[str | Path], timeout_s: float = 600, **kw: object) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout_s, **kw
    )
    assert result.returncode == 0, f"{cmd}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Python paths and without any kit setting."""
    kit = {o.env for o in OPTIONS} | {
        "MARKETSTREAM_HOME",
        "PYTHONPATH",
        "VIRTUAL_ENV",
        "PYTHONHOME",
    }
    env = {k: v for k, v in os.environ.items() if k not in kit}
    env.update(extra)
    return env


def build_wheel(tmp: Path) -> Path:
    """``pip wheel --no-deps`` of a copy of the sources (so no build/ lands in the checkout)."""
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".ipynb_checkpoints")
    for name in SOURCES:
        path = PROJECT_ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "dist", src])
    [wheel] = (tmp / "dist").glob("marketstream-*.whl")
    return wheel


def install(wheel: Path, venv: Path) -> None:
    """The wheel and its dependencies into a fresh venv, offline from the wheelhouse when it
    has them all, else after downloading what is missing into it."""
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    offline = [python, "-m", "pip", "install", "-q", "--no-compile", "--no-index"]
    offline += ["--find-links", WHEELHOUSE, wheel]
    env = clean_env()
    if WHEELHOUSE.is_dir():
        first = subprocess.run([str(c) for c in offline], capture_output=True, env=env)
        if first.returncode == 0:
            return
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    run([python, "-m", "pip", "download", "-q", "-d", WHEELHOUSE, wheel], env=env)
    for own in WHEELHOUSE.glob("marketstream-*.whl"):
        own.unlink()  # the kit itself always comes from this run's build
    run(offline, env=env)


def files_in(folder: Path) -> set[Path]:
    """Every file under ``folder`` except compiled bytecode (Python writes that anywhere)."""
    return {p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_the_installed_wheel_runs_the_pipeline_in_its_working_directory(
    kafka: Settings, tmp_path: Path
) -> None:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    wheel = build_wheel(tmp_path)
    timings["build"] = time.perf_counter() - started

    venv = tmp_path / "venv"
    started = time.perf_counter()
    install(wheel, venv)
    timings["install"] = time.perf_counter() - started
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = site / "site-packages"

    work = tmp_path / "work"
    work.mkdir()
    name = f"wheel-{uuid.uuid4().hex[:8]}"
    env = clean_env(
        KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers, KAFKA_TOPIC=name, KAFKA_CONSUMER_GROUP=name
    )
    marketstream = venv / "bin" / "marketstream"
    where = run(
        [venv / "bin" / "python", "-c", "import marketstream; print(marketstream.__file__)"],
        env=env,
        cwd=work,
    )
    assert where.stdout.strip().startswith(str(site))  # the installed copy, not the checkout

    before = files_in(site)
    started = time.perf_counter()
    pipeline = run([marketstream, "pipeline", "-q"], env=env, cwd=work)
    timings["pipeline"] = time.perf_counter() - started
    assert "rows stored      : 150" in pipeline.stdout

    db = work / "data" / "market_data.duckdb"
    assert store.tick_count(db) == 150
    assert (work / "data" / "indices_sample.csv").is_file()
    assert (work / "logs" / "pipeline.log").is_file()
    executed = sorted(p.name for p in (work / "output").glob("*.ipynb"))
    assert executed == [
        f"{n}.ipynb" for n in ("01_generate", "02_produce", "03_consume", "04_explore")
    ]
    assert files_in(site) == before  # nothing of the run inside the packages

    # the default install is the demo's: JupyterLab and the API server are extras
    api = subprocess.run(
        [marketstream, "api"], capture_output=True, text=True, env=env, cwd=work, timeout=60
    )
    assert api.returncode == 2 and "pip install 'marketstream[api]'" in api.stderr
    assert not (site / "jupyterlab").exists()
    version = run([marketstream, "--version"], env=env, cwd=work)
    assert version.stdout.startswith("marketstream ")
    print("wheel test timings (s):", {k: round(v, 1) for k, v in timings.items()})
