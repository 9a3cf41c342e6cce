"""Name -> class registries for plugins (composition methods, metrics, region extractors).

A config names a class: ``conf/method/switch.yaml`` says ``name: switch`` and the runner builds
``METHODS.get("switch")(**settings)``. Third-party packages add plugins without touching this repo by
declaring an entry point in their own ``pyproject.toml``::

    [project.entry-points."harness.methods"]
    my_method = "my_package.module:MyMethod"
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of plugin classes, filled by decorators and by an entry-point group."""

    def __init__(self, kind: str, entry_point_group: str) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._classes: dict[str, type[T]] = {}
        self._entry_points_loaded = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorate(cls: type[T]) -> type[T]:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({self._classes[name]} and {cls})")
            self._classes[name] = cls
            cls.registered_name = name  # type: ignore[attr-defined]
            return cls

        return decorate

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for entry_point in entry_points(group=self.entry_point_group):
            if entry_point.name not in self._classes:
                cls = entry_point.load()
                self.register(entry_point.name)(cls)

    def get(self, name: str) -> type[T]:
        if name not in self._classes:
            self._load_entry_points()
        if name not in self._classes:
            known = ", ".join(sorted(self.names()))
            raise KeyError(
                f"Unknown {self.kind} {name!r}. Known: {known}. A new {self.kind} is a class registered with "
                f"@{self.kind.upper()}S.register('{name}') (or an entry point in group "
                f"'{self.entry_point_group}') plus a config file naming it."
            )
        return self._classes[name]

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._classes)
