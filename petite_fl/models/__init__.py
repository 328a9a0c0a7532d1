"""Backbones: 3D image-to-image networks that declare where PEFT methods go."""

from petite_fl.models.base import PART_NAMES, Backbone, PromptSlot, Site, SiteKind
from petite_fl.models.registry import available_backbones, build_backbone, register_backbone

__all__ = [
    "PART_NAMES",
    "Backbone",
    "PromptSlot",
    "Site",
    "SiteKind",
    "available_backbones",
    "build_backbone",
    "register_backbone",
]
