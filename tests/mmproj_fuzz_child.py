"""Child process of the mmproj/image fuzz test: load each mutated projector (or caption each mutated image).

    python tests/mmproj_fuzz_child.py MODEL MMPROJ_DIR IMAGE_DIR

Prints "case <name> <outcome>" before and after each case, so a signal names the case that caused it.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(model: str, mmproj_dir: str, image_dir: str) -> int:
    from llamarcp import Llama
    from llamarcp.multimodal import Media

    good_image = Media("image", (Path(image_dir) / "good.png").read_bytes())
    with Llama(model, n_ctx=256, n_threads=1) as llm:
        for path in sorted(Path(mmproj_dir).glob("*.gguf")):
            print(f"case {path.name} start", flush=True)
            try:
                llm.load_projector(path)
                prompt = llm.media_prompt(f"x {llm.projector.marker} y", [good_image])  # type: ignore[union-attr]
                llm.create_completion(prompt, max_tokens=1, temperature=0)
                outcome = "ok"
            except Exception as exc:  # the point: every failure is an exception
                outcome = type(exc).__name__
            print(f"case {path.name} {outcome}", flush=True)
        llm.load_projector(Path(mmproj_dir) / "good" / "mlp.gguf")
        marker = llm.projector.marker  # type: ignore[union-attr]
        for path in sorted(Path(image_dir).glob("*.bin")):
            print(f"case {path.name} start", flush=True)
            try:
                prompt = llm.media_prompt(f"x {marker} y", [Media("image", path.read_bytes())])
                llm.create_completion(prompt, max_tokens=1, temperature=0)
                outcome = "ok"
            except Exception as exc:
                outcome = type(exc).__name__
            print(f"case {path.name} {outcome}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
