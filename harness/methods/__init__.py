"""Composition methods: ``build_method(name, settings)``. Importing this package registers the built-ins."""

from harness.methods import builtin  # noqa: F401  (registers base, single, merge, switch, composite, w_*)
from harness.methods.base import (
    METHODS, CompositionMethod, ImageContext, ImagePlan, Pass, StepPlan, build_method, declared_settings,
)

__all__ = ["METHODS", "CompositionMethod", "ImageContext", "ImagePlan", "Pass", "StepPlan", "build_method",
           "declared_settings"]
