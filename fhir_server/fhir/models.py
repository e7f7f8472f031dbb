"""The one place that imports ``fhir.resources.R4B``.

R4B models are structurally identical to R4 (4.0.1) for every resource this server
stores; R4B only changed medication-regulation and evidence resources.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache, lru_cache
from typing import Any

import fhir.resources.R4B as _r4b
from fhir.resources.R4B import get_fhir_model_class as _get_class
from fhir.resources.R4B.fhirresourcemodel import FHIRResourceModel
from pydantic import ValidationError

__all__ = [
    "FHIRResourceModel",
    "ValidationError",
    "model_class",
    "resource_types",
    "is_resource_type",
]

_NOT_RESOURCES = {"DomainResource", "Resource", "FHIRPrimitiveExtension"}


@lru_cache(maxsize=1)
def resource_types() -> frozenset[str]:
    """Every concrete resource type known to fhir.resources.R4B."""
    names: set[str] = set()
    for mod in pkgutil.iter_modules(_r4b.__path__):
        if mod.name.startswith("fhirtypes") or mod.name.endswith("validators"):
            continue
        try:
            cls = _get_class(_module_to_class_guess(mod.name))
        except Exception:  # noqa: BLE001 - not a resource module
            continue
        if cls is not None and issubclass(cls, FHIRResourceModel):
            name = cls.get_resource_type()
            if name not in _NOT_RESOURCES:
                names.add(name)
    return frozenset(names)


@cache
def _module_to_class_guess(module_name: str) -> str:
    module = importlib.import_module(f"fhir.resources.R4B.{module_name}")
    for attr in dir(module):
        obj = getattr(module, attr)
        if (
            isinstance(obj, type)
            and issubclass(obj, FHIRResourceModel)
            and obj.__module__ == module.__name__
            and attr.lower() == module_name
        ):
            return attr
    raise LookupError(module_name)


def is_resource_type(name: str) -> bool:
    return name in resource_types()


@cache
def model_class(resource_type: str) -> type[FHIRResourceModel]:
    """The pydantic model class of a resource type (``KeyError`` if unknown)."""
    if resource_type not in resource_types():
        raise KeyError(resource_type)
    return _get_class(resource_type)


def validate(resource_type: str, data: dict[str, Any]) -> FHIRResourceModel:
    """Validate a resource dict with its model; raises pydantic ``ValidationError``."""
    return model_class(resource_type).model_validate(data)


def parse_xml(resource_type: str, xml: bytes) -> FHIRResourceModel:
    return model_class(resource_type).model_validate_xml(xml)
