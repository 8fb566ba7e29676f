"""Architecture detection from a state dict alone (spandrel style): an ordered registry of the
family detectors, tried in turn; the first match wins. Each detector sits beside its network
(``bsrn.models.bsrn.detect_bsrn``, ...), with its notes on what the tensors cannot tell
(``UNDETECTABLE``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .models import bsrn, imdn, rfdn
from .models.bsrn import detect_bsrn
from .models.imdn import detect_imdn
from .models.rfdn import detect_rfdn

__all__ = ["DETECTORS", "Detector", "detect", "detect_bsrn", "detect_imdn", "detect_rfdn"]

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Detector:
    """One family: a key test, a shape reader, its published key signature (to explain near
    misses) and what its tensors cannot tell."""

    arch: str
    matches: Callable[[StateDict], bool]
    read: Callable[..., object]
    signature: tuple[str, ...]
    undetectable: dict[str, str]


#: In detection order.
DETECTORS: tuple[Detector, ...] = (
    Detector("rfdn", rfdn.is_rfdn, rfdn.detect_rfdn, rfdn.SIGNATURE, rfdn.UNDETECTABLE),
    Detector("bsrn", bsrn.is_bsrn, bsrn.detect_bsrn, bsrn.SIGNATURE, bsrn.UNDETECTABLE),
    Detector("imdn", imdn.is_imdn, imdn.detect_imdn, imdn.SIGNATURE, imdn.UNDETECTABLE),
)


def detect(sd: StateDict, scale: int | None = None) -> tuple[str, object]:
    """Return (architecture, config) for a state dict, or raise ValueError explaining the miss.
    ``scale`` settles what some heads' tensors cannot tell (see each ``UNDETECTABLE``)."""
    for d in DETECTORS:
        if not d.matches(sd):
            continue
        try:
            cfg = d.read(sd, scale)
        except KeyError as e:
            raise ValueError(f"looks like {d.arch}, but {e.args[0]} is missing") from None
        except (ValueError, IndexError, StopIteration) as e:
            raise ValueError(f"looks like {d.arch}, but {e}") from None
        if cfg is not None:
            return d.arch, cfg
    best, d = max(((sum(k in sd for k in d.signature), d) for d in DETECTORS),
                  key=lambda t: t[0])
    sample = ", ".join(list(sd)[:4])
    raise ValueError(f"unrecognised architecture (keys start {sample}, ...); closest is {d.arch} "
                     f"with {best}/{len(d.signature)} of its signature keys")
