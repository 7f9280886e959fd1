"""The cffi `ffi` of the llama.cpp release the loaded library was built from: one object per process.

Every module that needs C types imports `ffi` from here, never from a generated module directly, so the
declarations follow the release `llamarcp._release` selects for the library `_lib` loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # typed as the pin's generated module (its stub); the runtime object may be another release's
    from llamarcp._generated._llama_ffi import ffi as ffi
else:
    from llamarcp._release import selected_ffi

    ffi = selected_ffi()
