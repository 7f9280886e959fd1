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

#: Upstream's archive of the pinned commit, tried first by build_lib.py on machines that reach GitHub.
ARCHIVE_URL = f"https://github.com/ggml-org/llama.cpp/archive/{LLAMA_CPP_COMMIT}.tar.gz"

#: The part of the tree that decides the build (what an llamarcp sdist carries, and what TREE_SHA256 covers).
TREE_PATHS = (
    "CMakeLists.txt",
    "LICENSE",
    "app",
    "cmake",
    "common",
    "ggml",
    "include",
    "licenses",
    "src",
    "tools",
    "vendor",
)

#: Content hash of TREE_PATHS of the pinned commit (build_lib.tree_sha256: relative path + sha256 of each file,
#: no timestamps or modes). GitHub's archive bytes are not stable and GitHub was unreachable when this was
#: pinned, so the archive itself is verified by this hash after extraction instead of by a tarball sha256. It
#: was computed from the carrier sdist's vendored tree below (sha256-verified, same commit); build_lib checks
#: the carrier against it too, so the two sources of the pin cannot silently disagree.
TREE_SHA256 = "0eb43229995b68ada3a0e5f79f9fe0fda21d42754b5efbac2dec30e5977db095"

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
