"""Child process for the tensor-type crash tests: load each GGUF, run one decode, report.

    python tests/gguf_types_child.py [--no-validate] MODEL...

Prints one JSON line per model: {"model": path, "error": exception class or null, "message": ...}. A model
that makes ggml abort kills this process with a signal, which the parent sees as the exit status.
`--no-validate` replaces llamarcp's GGUF check by a no-op, to show what llama.cpp alone does with the file.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    import llamarcp._core
    from llamarcp import Llama

    if argv and argv[0] == "--no-validate":
        argv = argv[1:]
        llamarcp._core.check_gguf_hparams = lambda *args, **kwargs: None  # type: ignore[assignment]
    for path in argv:
        result: dict[str, object] = {"model": path, "error": None, "message": ""}
        try:
            import gguf

            arch = gguf.GGUFReader(path).fields["general.architecture"].contents()
            if arch == "bert":
                with Llama(path, embedding=True, n_ctx=64, n_threads=1, verbose=False) as llm:
                    result["message"] = f"{len(llm.embed('hello world'))} floats"
            else:
                with Llama(path, n_ctx=64, n_threads=1, verbose=False) as llm:
                    result["message"] = llm.create_completion("hello", max_tokens=2, temperature=0)["choices"][0][
                        "text"
                    ]
        except Exception as exc:  # the point: every failure is an exception, reported to the parent
            result["error"] = type(exc).__name__
            result["message"] = str(exc)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
