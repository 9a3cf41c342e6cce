"""Composition methods: ``build_method(name, settings)``. Importing this package registers the built-ins."""

from harness.methods import builtin  # noqa: F401  (registers base, single, merge, switch, composite, w_*)
from harness.methods import cmlora, klora, loratorio, peft_merge  # noqa: F401  (the field's other methods)
from harness.methods.base import (
    METHODS, CompositionMethod, ImageContext, ImagePlan, LayerRouting, Pass, StepPlan, build_method,
    declared_settings,
)

__all__ = ["METHODS", "CompositionMethod", "ImageContext", "ImagePlan", "LayerRouting", "Pass", "StepPlan",
           "build_method", "declared_settings"]
