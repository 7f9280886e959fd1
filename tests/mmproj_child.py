"""Child process for the mmproj crash tests: load each projector with the model, caption one image, report.

    python tests/mmproj_child.py MODEL IMAGE MMPROJ...

Prints one JSON line per projector: {"mmproj": path, "error": exception class or null, "message": ...}. A
projector that crashes libmtmd kills this process with a signal, which the test sees as the exit status.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    from llamarcp import Llama

    model, image, *projectors = argv
    for path in projectors:
        result: dict[str, object] = {"mmproj": path, "error": None, "message": ""}
        try:
            with Llama(model, mmproj=path, n_ctx=256, n_threads=1) as llm:
                reply = llm.create_chat_completion(
                    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}],
                    max_tokens=2,
                    temperature=0,
                )
                result["message"] = reply["choices"][0]["message"]["content"]
        except Exception as exc:  # the point: every failure is an exception, reported to the parent
            result["error"] = type(exc).__name__
            result["message"] = str(exc)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
