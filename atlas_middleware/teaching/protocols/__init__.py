"""Teacher protocols: how the loop talks to one style of teacher.

=============  ================================================  ===========================
protocol       for                                               reply read as
=============  ================================================  ===========================
``atlas``      the ATLAS teachers (``Arc-Intelligence/ATLAS-*``)  ``<teaching>`` if present,
               and models trained like them                      else the whole reply
``structured`` general-purpose LLMs as teachers                  ``<thinking>``, ``<level>``,
                                                                 ``<teaching>`` tags
=============  ================================================  ===========================

``teacher_protocol="auto"`` (the default) picks ``atlas`` when the teacher's model string
names an ATLAS teacher and ``structured`` otherwise. A self-hosted teacher served under
another name (vLLM's ``--served-model-name``) is recognised by what its server says it
loaded (``root`` in ``/v1/models``, asked once: ``backends/served.py``, ``served_as_atlas``);
a Router group, or a server that cannot say, needs ``teacher_protocol="atlas"`` set.
"""

from __future__ import annotations

import re
from typing import Literal

from ...errors import ConfigError
from .atlas import AtlasProtocol
from .base import PLACEMENTS, Placement, TeacherProtocol, guidance_of
from .structured import StructuredProtocol

ProtocolName = Literal["auto", "atlas", "structured"]
PROTOCOL_NAMES: tuple[ProtocolName, ...] = ("auto", "atlas", "structured")

ATLAS = AtlasProtocol()
STRUCTURED = StructuredProtocol()
PROTOCOLS: dict[str, TeacherProtocol] = {p.name: p for p in (ATLAS, STRUCTURED)}

_ATLAS_MODEL = re.compile(r"(?:^|/)arc-intelligence/atlas-", re.IGNORECASE)
# What vLLM reports as ``root``: the Hugging Face id, or the path it loaded the weights from
# (a copy named after the model, or the Hub cache's ``models--Arc-Intelligence--ATLAS-...``).
_ATLAS_ROOT = re.compile(r"(?:^|/|--)arc-intelligence(?:/|--)atlas-|(?:^|/)atlas-\d+b", re.IGNORECASE)


def served_as_atlas(root: str | None) -> bool:
    """Whether the model a server says it loaded (vLLM's ``root``) is an ATLAS teacher."""
    return bool(root) and _ATLAS_ROOT.search(root or "") is not None


def protocol_for(setting: str, teacher_model: str | None) -> TeacherProtocol:
    """The protocol a setting names; ``auto`` reads the teacher's model string."""
    if setting == "auto":
        return ATLAS if teacher_model and _ATLAS_MODEL.search(teacher_model) else STRUCTURED
    try:
        return PROTOCOLS[setting]
    except KeyError:
        raise ConfigError(f"unknown teacher protocol {setting!r}; choose one of {', '.join(PROTOCOL_NAMES)}") from None


__all__ = [
    "ATLAS",
    "PLACEMENTS",
    "PROTOCOLS",
    "PROTOCOL_NAMES",
    "STRUCTURED",
    "AtlasProtocol",
    "Placement",
    "ProtocolName",
    "StructuredProtocol",
    "TeacherProtocol",
    "guidance_of",
    "protocol_for",
    "served_as_atlas",
]
