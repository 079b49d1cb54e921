"""The CRD manifest is generated from the spec model (``make crd``); these keep it so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ringlb_operator import crd

ROOT = Path(__file__).resolve().parents[3]


def test_committed_crd_is_the_generated_one() -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "ringlb_operator.crd"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    committed = (ROOT / crd.MANIFEST).read_text()
    assert committed == generated, f"{crd.MANIFEST} is not what the spec model generates: run `make crd`"


class _Inner(BaseModel):
    """The model's docstring: the field's own description wins over it."""

    level: int = 1


class _Toy(BaseModel):
    """Shapes the spec model may grow into, and what each must become."""

    inner: _Inner = Field(default_factory=_Inner, description="The field's own.")
    count: int | None = Field(None, ge=1)
    size: int | str | None = None
    free: dict[str, Any] = Field(default_factory=dict)
    names: tuple[str, ...] = ()


def test_pydantic_schema_becomes_structural() -> None:
    props = crd.model_schema(_Toy)["properties"]
    assert props["inner"] == {
        "type": "object",
        "description": "The field's own.",
        "default": {},
        "properties": {"level": {"type": "integer", "default": 1}},
    }
    assert props["count"] == {"type": "integer", "minimum": 1, "nullable": True}
    assert props["size"] == {
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "nullable": True,
        "x-kubernetes-int-or-string": True,
    }
    assert props["free"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert props["names"] == {"type": "array", "items": {"type": "string"}}
