"""Compiled extensions; everything else about the package is in pyproject.toml.

Each entry of EXTENSIONS is one C module. ``pip install .`` (or ``-e .``) builds them;
in a source checkout, ``python setup.py build_ext --inplace`` puts them next to their
Python modules under ``src/`` (where pytest imports the package from). They are optional:
where one does not compile, the install goes on and the package uses its slower
pure-Python/numpy fallback (CI sets DNSVR_REQUIRE_EXTENSIONS=1 so that this fails a test).
"""

from __future__ import annotations

from setuptools import Extension, setup

COMPILE_ARGS = ["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]

EXTENSIONS = [
    # the reader of {query: {video: score}} similarity files (dnsvr.eval._fastjson)
    Extension("dnsvr.eval._simscan", ["src/dnsvr/eval/_simscan.c"], extra_compile_args=COMPILE_ARGS,
              optional=True),
    # the fused int8 region stage of the fine similarity (dnsvr.fine.regions); AVX-512 VNNI code is compiled per
    # function and chosen at run time, so the flags stay portable
    Extension("dnsvr._finekernel", ["src/dnsvr/_finekernel.c"], extra_compile_args=COMPILE_ARGS,
              extra_link_args=["-pthread"], optional=True),
]

setup(ext_modules=EXTENSIONS)
