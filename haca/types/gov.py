"""gov module messages: what the governance authority named in genesis may sign."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from haca.types import fields as f
from haca.types.encoding import canonical_json
from haca.types.tx import register_msg

MAX_PARAMS_BYTES = 4096


@register_msg
@dataclass(frozen=True)
class MsgUpdateParams:
    """Change some params of one module (the others keep their values). Only an authority may."""

    type_name: ClassVar[str] = "gov/update_params"
    eip712_name: ClassVar[str] = "MsgUpdateParams"
    eip712_fields: ClassVar[list[tuple[str, str]]] = [("module", "string"), ("params", "string")]

    module: str
    params: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"module": self.module, "params": self.params}

    def to_eip712(self) -> dict[str, Any]:
        return {"module": self.module, "params": canonical_json(self.params).decode()}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> MsgUpdateParams:
        doc = f.require_fields(value, {"module", "params"}, "gov/update_params")
        params = doc["params"]
        if not isinstance(params, dict) or not params:
            raise ValueError("params: expected a non-empty object")
        if len(canonical_json(params)) > MAX_PARAMS_BYTES:
            raise ValueError(f"params: at most {MAX_PARAMS_BYTES} bytes")
        return cls(f.name(doc["module"], "module"), json.loads(canonical_json(params)))
