"""The one place that makes ``import torchvision`` work against a CPU-only torch.

Why: PyPI's torchvision wheel is a CUDA build. Its C extension cannot load against the CPU torch wheel,
so the operator schemas it would register (``torchvision::nms``, ``torchvision::qnms``) are missing, and
``torchvision/_meta_registrations.py`` then fails at import with
``RuntimeError: operator torchvision::nms does not exist``. That breaks ``import open_clip`` and
diffusers' CLIP image processor, both of which import torchvision.

Fix: when (and only when) that exact failure happens, define the two operator *schemas* (no kernels) in a
``torch.library`` fragment and import again. ``torchvision.ops.nms`` stays unusable on such an install;
nothing in the harness needs it. With a matching torch/torchvision pair (e.g. CUDA torch on a GPU machine)
the first import succeeds and this module does nothing.
"""

from __future__ import annotations

import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_fragment = None  # kept alive for the life of the process: dropping it would unregister the schemas


def ensure_torchvision_importable() -> None:
    """Import torchvision, defining its missing operator schemas first if the C extension did not load."""
    global _fragment
    try:
        import torchvision  # noqa: F401
        return
    except ModuleNotFoundError:
        return  # torchvision not installed: the libraries that need it will say so themselves
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    _fragment = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        _fragment.define(schema)
    import torchvision  # noqa: F401,F811
