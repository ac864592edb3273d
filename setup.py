"""Compiles the Cython hot paths in ext/ into ustack._<name> modules (metadata: pyproject.toml)."""
import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(f"ustack.{pyx.stem}", [str(pyx)], extra_compile_args=["-O2"])
    for pyx in sorted(Path("ext").glob("_*.pyx"))
    # USTACK_EXT=_segment builds one module only (handy while another is being edited).
    if os.environ.get("USTACK_EXT", pyx.stem) == pyx.stem
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
