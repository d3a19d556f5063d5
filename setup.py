"""The compiled part of recsys (features/_kernels.c); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "features._kernels", ["features/_kernels.c"],
    # -ffp-contract=off: no fused multiply-adds, so float32 sums round exactly as the numpy
    # code they replace (and the same on every machine)
    extra_compile_args=["-O3", "-std=c11", "-ffp-contract=off"])])
