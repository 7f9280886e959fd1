"""`llama_cpp.llama_cpp` under llamarcp's name: llama.h's names, resolved lazily from `llamarcp.lib`."""

from llamarcp.compat.lowlevel import __dir__ as __dir__
from llamarcp.compat.lowlevel import __getattr__ as __getattr__
from llamarcp.compat.lowlevel import llama_backend_free as llama_backend_free
from llamarcp.compat.lowlevel import llama_backend_init as llama_backend_init
