"""Sphinx configuration: the API reference is built from jaxprune's docstrings.

Build (warnings are errors, as in CI):  python -m sphinx -W --keep-going -b html docs docs/_build
"""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's jaxprune, installed or not

project = "jaxprune"
author = "jaxprune authors"
copyright = "jaxprune authors, Apache-2.0"  # noqa: A001 (Sphinx's name)
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # Google-style docstrings
    "sphinx.ext.viewcode",
]
autodoc_default_options = {"members": True, "imported-members": True, "member-order": "bysource"}
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields: NamedTuple fields are not described twice
# Docstrings write absolute values as |w|, which reST reads as substitutions: define them.
rst_prolog = "\n".join(f".. |{name}| replace:: \\|{name}\\|" for name in ("w", "g", "w·g"))
exclude_patterns = ["_build"]
html_theme = "alabaster"
