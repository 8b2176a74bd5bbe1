"""Model adapters, one module per Hugging Face `model_type`, registered by decorator.

A new architecture is one new file in this folder with a `@register_adapter` class: every
module here is imported when the registry is first asked.
"""

from __future__ import annotations

import importlib
import pkgutil

from moe_compile.errors import InvalidInput

from .base import MoEAdapter

_REGISTRY: dict[str, type[MoEAdapter]] = {}
_discovered = False


def register_adapter(cls: type[MoEAdapter]) -> type[MoEAdapter]:
    if cls.model_type in _REGISTRY:
        raise ValueError(f"two adapters for model_type '{cls.model_type}'")
    _REGISTRY[cls.model_type] = cls
    return cls


def _discover() -> None:
    global _discovered
    if not _discovered:
        for module in pkgutil.iter_modules(__path__):
            if module.name != "base":
                importlib.import_module(f"{__name__}.{module.name}")
        _discovered = True


def supported_model_types() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def adapter_class(model_type: object) -> type[MoEAdapter]:
    _discover()
    if not isinstance(model_type, str) or model_type not in _REGISTRY:
        raise InvalidInput(
            f"model_type {model_type!r} is not supported (supported: {', '.join(supported_model_types())})")
    return _REGISTRY[model_type]


__all__ = ["MoEAdapter", "adapter_class", "register_adapter", "supported_model_types"]
