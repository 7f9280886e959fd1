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


#: Every carrier the tools know how to fetch, by version: the window's (below), the previous pin (0.3.36, still the
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
    "2026.4.8672": Carrier(
        package="xllamacpp",
        version="2026.4.8672",
        filename="xllamacpp-2026.4.8672.tar.gz",
        sha256="aa412528d71ad73905b5111a26bec4c2d228c2e4d6220d20dff229934b2e93a3",
        subdir="thirdparty/llama.cpp",
        commit="b8672",
        url="https://files.pythonhosted.org/packages/98/fb/1125f8ff7e38f53a894f4409c5e7e844774c31a7c410a1fd481e318f4e6b/"
        "xllamacpp-2026.4.8672.tar.gz",
    ),
    "2026.4.8929": Carrier(
        package="xllamacpp",
        version="2026.4.8929",
        filename="xllamacpp-2026.4.8929.tar.gz",
        sha256="5e8da5fd317aa4c094f7dc2c7f14750400c538855a2e71ce39487faed3927436",
        subdir="thirdparty/llama.cpp",
        commit="b8929",
        url="https://files.pythonhosted.org/packages/54/23/e5b614ce3ed0116108af72fa8cc9186cdc371415902a99fa2915ee84a49d/"
        "xllamacpp-2026.4.8929.tar.gz",
    ),
    "2026.5.9093": Carrier(
        package="xllamacpp",
        version="2026.5.9093",
        filename="xllamacpp-2026.5.9093.tar.gz",
        sha256="5564e1e7a138ab0b4970990d5792e407990698b48f130fd9675d1db4f7d741d5",
        subdir="thirdparty/llama.cpp",
        commit="b9093",
        url="https://files.pythonhosted.org/packages/53/3d/8b7a5317f417e26c632459c197a0e782d0cfadb614e91f4139a37311325a/"
        "xllamacpp-2026.5.9093.tar.gz",
    ),
    "2026.5.9294": Carrier(
        package="xllamacpp",
        version="2026.5.9294",
        filename="xllamacpp-2026.5.9294.tar.gz",
        sha256="e32a77d2afe9831080055378cfe88f538aa03c600de6635e4f6772420b087b7c",
        subdir="thirdparty/llama.cpp",
        commit="b9294",
        url="https://files.pythonhosted.org/packages/ce/5f/d74feb09c099814dce6afe2a6e79b98c2ef394072e5da5c696a56626c583/"
        "xllamacpp-2026.5.9294.tar.gz",
    ),
    "2026.6.9538": Carrier(
        package="xllamacpp",
        version="2026.6.9538",
        filename="xllamacpp-2026.6.9538.tar.gz",
        sha256="46a7e2c9c4abd3ef2906ebd03660490f1d0b33113798d9b38aa6dcd37c268a14",
        subdir="thirdparty/llama.cpp",
        commit="b9538",
        url="https://files.pythonhosted.org/packages/ea/4d/c5d0e0bc941d5048cacd531a291e243bc21b8d119a6aacb9e86692c9abe7/"
        "xllamacpp-2026.6.9538.tar.gz",
    ),
    "2026.6.9713": Carrier(
        package="xllamacpp",
        version="2026.6.9713",
        filename="xllamacpp-2026.6.9713.tar.gz",
        sha256="158020469c745ada6a5e3eb2b88f28eeed7604aa699ec07efca1291629554e97",
        subdir="thirdparty/llama.cpp",
        commit="b9713",
        url="https://files.pythonhosted.org/packages/02/44/150b08dab728867493abad822e4fd3942f5d89af5d96bd8190d3f123e7d6/"
        "xllamacpp-2026.6.9713.tar.gz",
    ),
    "2026.7.9873": Carrier(
        package="xllamacpp",
        version="2026.7.9873",
        filename="xllamacpp-2026.7.9873.tar.gz",
        sha256="ab5dd177a4712398c1ef7dcab4d8e76b8e34e274712fb8d20630f3f7e43eefca",
        subdir="thirdparty/llama.cpp",
        commit="b9873",
        url="https://files.pythonhosted.org/packages/5a/3b/f817ae321be588e3862926a73e18134eac75db982f0836035808f22dbc11/"
        "xllamacpp-2026.7.9873.tar.gz",
    ),
    "2026.7.10068": Carrier(
        package="xllamacpp",
        version="2026.7.10068",
        filename="xllamacpp-2026.7.10068.tar.gz",
        sha256="70309c587f39ed89eccc9361421f9f42e94828d1018f79b6548a27ee18dfcb67",
        subdir="thirdparty/llama.cpp",
        commit="b10068",
        url="https://files.pythonhosted.org/packages/3b/ff/59b8f153dc77aecc44598e957fa2ab9ddfab2a42426cf6bfa3f3c0fe5d81/"
        "xllamacpp-2026.7.10068.tar.gz",
    ),
    "2026.8.10229": Carrier(
        package="xllamacpp",
        version="2026.8.10229",
        filename="xllamacpp-2026.8.10229.tar.gz",
        sha256="d2924b89b4010c81703a41ec17720a3f26a8e7b7a0a5f4f0563566d02f4f424c",
        subdir="thirdparty/llama.cpp",
        commit="b10229",
        url="https://files.pythonhosted.org/packages/06/df/e68d74779fdf2effe62ed6cda7fc273013037aadd5ff3c681e71bfe0a307/"
        "xllamacpp-2026.8.10229.tar.gz",
    ),
    "2026.8.10566": Carrier(
        package="xllamacpp",
        version="2026.8.10566",
        filename="xllamacpp-2026.8.10566.tar.gz",
        sha256="c216159932bda7de056423a921b04532a21afc58c1f26ba3b65869650c92eb27",
        subdir="thirdparty/llama.cpp",
        commit="b10566",
        url="https://files.pythonhosted.org/packages/0d/f6/b0ebbb3becd632ffe0c11850e6acc1bab234e915a8779d555751ae2735ef/"
        "xllamacpp-2026.8.10566.tar.gz",
    ),
    "2026.9.10809": Carrier(
        package="xllamacpp",
        version="2026.9.10809",
        filename="xllamacpp-2026.9.10809.tar.gz",
        sha256="67d1ba941ae7ed603cece162ffb8b41df8677726d50d1a9c624a76962d3db2dd",
        subdir="thirdparty/llama.cpp",
        commit="b10809",
        url="https://files.pythonhosted.org/packages/7f/c1/3ad06333ac444b43e3240e1bc3d96fb54c6960f364008c3167720f8a786b/"
        "xllamacpp-2026.9.10809.tar.gz",
    ),
    "2026.9.11063": Carrier(
        package="xllamacpp",
        version="2026.9.11063",
        filename="xllamacpp-2026.9.11063.tar.gz",
        sha256="37ad3d0389f1d65b68e7d341df86d55077158950a764801be94f955024afb759",
        subdir="thirdparty/llama.cpp",
        commit="b11063",
        url="https://files.pythonhosted.org/packages/20/91/a0d6f0fc4e4f1f9caacd2bd38417b7b5c9f16d6aa78d9925d3b2628ad0c1/"
        "xllamacpp-2026.9.11063.tar.gz",
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

#: The window of releases llamarcp serves, oldest first (`python codegen/generate.py --releases` writes their
#: declarations into `_generated/_releases.py`; `llamarcp._release` picks one for the library it loads): every
#: xllamacpp carrier from the first 2026 one on, llama-cpp-python 0.3.36's tree, and the pin.
WINDOW: tuple[str, ...] = (
    "2026.4.8672",
    "2026.4.8929",
    "2026.5.9093",
    "2026.5.9294",
    "2026.6.9538",
    "2026.6.9713",
    "2026.7.9873",
    "2026.7.10068",
    "2026.8.10229",
    "2026.8.10566",
    "2026.9.10809",
    "2026.9.11063",
    "0.3.36",
    "2026.10.11549",
)

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
