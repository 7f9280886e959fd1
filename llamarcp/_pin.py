"""The one place that names the llama.cpp this package is generated from and built against.

codegen/generate.py, build_lib.py and the runtime guard all read these values. A bump moves them with
`python -m codegen.bump --carrier VERSION --pin` (see README "Bumping llama.cpp").
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
    commit: str  #: upstream's commit SHA, or its release tag (bNNNN) when the carrier does not record the SHA
    url: str = ""  #: the sdist's file URL on PyPI (content-addressed); empty: `pip download` finds it


#: Every carrier the tools know how to fetch, by version: the pin's, the previous pin (0.3.36, still the
#: llama.cpp that llama-cpp-python's own ctypes describe) and an older one (0.3.16, the drift tests' history).
KNOWN_CARRIERS = {
    "0.3.36": Carrier(
        package="llama-cpp-python",
        version="0.3.36",
        filename="llama_cpp_python-0.3.36.tar.gz",
        sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
        subdir="vendor/llama.cpp",
        commit="0c1e57098bba43ac29e6e3b677cdceebdd22334f",
        url="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/"
        "llama_cpp_python-0.3.36.tar.gz",
    ),
    "0.3.16": Carrier(
        package="llama-cpp-python",
        version="0.3.16",
        filename="llama_cpp_python-0.3.16.tar.gz",
        sha256="34ed0f9bd9431af045bb63d9324ae620ad0536653740e9bb163a2e1fcb973be6",
        subdir="vendor/llama.cpp",
        commit="4227c9be4268ac844921b90f31595f81236bd317",
        url="https://files.pythonhosted.org/packages/e4/b4/c8cd17629ced0b9644a71d399a91145aedef109c0333443bef015e45b704/"
        "llama_cpp_python-0.3.16.tar.gz",
    ),
    "2026.10.11549": Carrier(
        package="xllamacpp",
        version="2026.10.11549",
        filename="xllamacpp-2026.10.11549.tar.gz",
        sha256="c17ee1163006f70726abb9f72137830818f3d8cb60bfc34cb232d08428eaa22b",
        subdir="thirdparty/llama.cpp",
        commit="b11549",
        url="https://files.pythonhosted.org/packages/87/62/b6dfaaf346d3d4fd0e2a2df755f2693b77673f2735da7ba0592af9d2f09e/"
        "xllamacpp-2026.10.11549.tar.gz",
    ),
}

#: The carrier whose vendored llama.cpp is the pin (`python -m codegen.bump --carrier V --pin` rewrites this line
#: and TREE_SHA256 below; nothing else here changes in a bump).
PINNED_CARRIER = "2026.10.11549"

#: The sdist whose vendored tree is the pinned source; its sha256 is verified before use.
PINNED = KNOWN_CARRIERS[PINNED_CARRIER]

#: The llama.cpp revision every generated file, build and guard refers to: a commit SHA, or upstream's release
#: tag when the carrier records no SHA (TREE_SHA256 makes either exact).
LLAMA_CPP_COMMIT = PINNED.commit

#: Upstream's archive of the pinned revision (GitHub serves commits and tags alike), tried first by build_lib.py
#: on machines that reach GitHub.
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

#: Content hash of TREE_PATHS of the pinned tree (build_lib.tree_sha256: relative path + sha256 of each file,
#: no timestamps or modes). GitHub's archive bytes are not stable, so the archive is verified by this hash after
#: extraction instead of by a tarball sha256. It is computed from the carrier's vendored tree (sha256-verified);
#: build_lib checks the carrier against it too, so the two sources of the pin cannot silently disagree.
TREE_SHA256 = "fd3ee8c81496161573235840831ad6014ba9def76095504ce3e2b6818b65d9fa"
