"""harness: evaluation harness and benchmark suite for multi-LoRA composition in text-to-image diffusion."""

from harness._torchvision_compat import ensure_torchvision_importable

ensure_torchvision_importable()

__version__ = "0.1.0"
