"""The one place that names the llama.cpp this package is generated from and built against.

codegen/generate.py, build_lib.py and the runtime guard all read these values; bump them together
with `python codegen/generate.py` (see README "Bumping llama.cpp").
"""

from __future__ import annotations

from typing import NamedTuple


class Carrier(NamedTuple):
    """A PyPI sdist that vendors a llama.cpp tree (we take only its vendored sources)."""

    package: str
    version: str
    filename: str
    sha256: str
    subdir: str
    commit: str


#: The llama.cpp commit every generated file, build and guard refers to.
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"

#: The sdist whose `vendor/llama.cpp` is the pinned source; its sha256 is verified before use.
PINNED = Carrier(
    package="llama-cpp-python",
    version="0.3.36",
    filename="llama_cpp_python-0.3.36.tar.gz",
    sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
    subdir="vendor/llama.cpp",
    commit=LLAMA_CPP_COMMIT,
)

#: Other carriers the tools know how to fetch (drift tests compare against older llama.cpp).
KNOWN_CARRIERS = {
    PINNED.version: PINNED,
    "0.3.16": Carrier(
        package="llama-cpp-python",
        version="0.3.16",
        filename="llama_cpp_python-0.3.16.tar.gz",
        sha256="34ed0f9bd9431af045bb63d9324ae620ad0536653740e9bb163a2e1fcb973be6",
        subdir="vendor/llama.cpp",
        commit="4227c9be4268ac844921b90f31595f81236bd317",
    ),
}
