"""Builds the optional oneDNN convolution extension (cifar_jax/csrc) on Linux
x86-64; everything else about the package is in pyproject.toml.

The extension is optional: if it cannot be built (no C++ compiler, another
platform), the package installs without it and convolutions run on XLA. It
records the version of the jaxlib whose FFI headers it is compiled against;
`cifar_jax.cpu_conv` loads it only under that same jaxlib (pyproject.toml
pins build and runtime to one range).
"""

import importlib.metadata
import os
import platform
import sys

from setuptools import Extension
from setuptools import setup


def _dist_file(distribution: str, suffix: str) -> str:
  """Absolute path of the file `suffix` installed by `distribution`."""
  dist = importlib.metadata.distribution(distribution)
  for f in dist.files or ():
    if ("/" + str(f).replace(os.sep, "/")).endswith(suffix):
      return str(dist.locate_file(f).resolve())
  raise FileNotFoundError(f"{suffix} not found in {distribution}")


def extensions():
  if sys.platform != "linux" or platform.machine() != "x86_64":
    return []
  try:
    import jaxlib

    header = _dist_file("onednn-devel-cpu-gomp", "/include/oneapi/dnnl/dnnl.hpp")
    library = _dist_file("onednn-cpu-gomp", "/libdnnl.so")
  except (ImportError, importlib.metadata.PackageNotFoundError, FileNotFoundError) as e:
    print(f"cifar_jax: not building the oneDNN convolutions ({e})")
    return []
  return [
    Extension(
      "cifar_jax._onednn_conv",
      sources=[
        "cifar_jax/csrc/onednn_conv.cc",
        "cifar_jax/csrc/onednn_attention.cc",
        "cifar_jax/csrc/onednn_matmul.cc",
      ],
      include_dirs=[
        os.path.join(os.path.dirname(jaxlib.__file__), "include"),
        os.path.dirname(os.path.dirname(os.path.dirname(header))),
      ],
      library_dirs=[os.path.dirname(library)],
      libraries=["dnnl"],
      define_macros=[("CIFAR_JAX_JAXLIB_VERSION", f'"{jaxlib.__version__}"')],
      # OpenMP: the attention's parallel loop, on the GNU runtime that
      # onednn-cpu-gomp's oneDNN runs on.
      extra_compile_args=["-std=c++17", "-O2", "-fopenmp", "-Wno-attributes", "-Wno-return-type"],
      extra_link_args=["-fopenmp"],
      language="c++",
      optional=True,
    )
  ]


setup(ext_modules=extensions())
