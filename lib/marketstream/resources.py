"""Files the package ships besides its code: the numbered notebooks and Voila's config.

Why package data: the notebooks *are* the pipeline (papermill runs them) and
live mode's Voila page, so an installed package that lacks them cannot run
``marketstream pipeline`` or ``marketstream live``. They used to be found at
``<source checkout>/notebooks``; from a wheel that pointed into
``site-packages/..``, where nothing is.

How they get into the package without moving them (the design card keeps a
top-level ``notebooks/``): ``lib/marketstream/notebooks`` is a symlink to it,
so the source checkout, an editable install and the wheel (setuptools copies
the files behind the link, declared as package data in pyproject.toml) all
find them at the same place inside the package, through
:mod:`importlib.resources`. One code path, no build step, nothing copied by
hand that could go stale; the five notebooks add 14.6 KB to the wheel.
Checked by tests/integration/test_wheel.py, which builds the wheel and runs
the pipeline from it in a fresh venv.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from marketstream.errors import ResourceMissing

__all__ = ["NOTEBOOKS", "ResourceMissing", "notebook", "notebook_dir"]

#: The notebooks the package ships (the pipeline runs 01-04; 05 is the Voila page; 06 and
#: 07 are walkthroughs of the guarantees and of scale-out, run by nbval, not the pipeline).
NOTEBOOKS = (
    "01_generate",
    "02_produce",
    "03_consume",
    "04_explore",
    "05_live",
    "06_guarantees",
    "07_scale_out",
)


def notebook_dir() -> Path:
    """The folder of the shipped notebooks, as a real path (papermill and Voila need one)."""
    found = files("marketstream") / "notebooks"
    if not isinstance(found, Path) or not found.is_dir():
        raise ResourceMissing(
            f"the marketstream package has no notebooks folder ({found}); reinstall it "
            "(pip install --force-reinstall marketstream)"
        )
    return found


def notebook(name: str) -> Path:
    """One shipped notebook by name (``01_generate`` or ``01_generate.ipynb``)."""
    path = notebook_dir() / (name if name.endswith(".ipynb") else f"{name}.ipynb")
    if not path.is_file():
        raise ResourceMissing(f"the marketstream package has no notebook {path.name}")
    return path
