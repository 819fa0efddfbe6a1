"""Package discovery that pyproject.toml alone cannot express.

Every ``onnxprune.*`` subpackage is discovered (a new one needs no edit here), and the
top-level ``passes/`` folder, part of the source layout, is installed as
``onnxprune.passes`` (with its own subpackages, should it grow any). setuptools'
``[tool.setuptools.packages.find]`` only finds packages where they lie on disk, so it
cannot add a package that lives outside ``onnxprune/``; everything else is in
pyproject.toml.
"""
from __future__ import annotations

from setuptools import find_packages, setup

PACKAGES = find_packages(include=["onnxprune", "onnxprune.*"])
PASSES = ["onnxprune.passes", *(f"onnxprune.passes.{p}" for p in find_packages(where="passes"))]

setup(packages=PACKAGES + PASSES, package_dir={"onnxprune": "onnxprune", "onnxprune.passes": "passes"})
