"""gov state under prefix `gov/`.

gov/authorities -> canonical JSON list of the authority addresses (sorted)
"""

from __future__ import annotations

import json

from haca.chain.errors import Unauthorized
from haca.chain.state import CachedState, ReadableState
from haca.types.encoding import canonical_json

PREFIX = b"gov/"
AUTHORITIES_KEY = PREFIX + b"authorities"


class GovKeeper:
    def authorities(self, state: ReadableState) -> list[str]:
        raw = state.get(AUTHORITIES_KEY)
        return list(json.loads(raw)) if raw else []

    def set_authorities(self, state: CachedState, authorities: tuple[str, ...]) -> None:
        state.set(AUTHORITIES_KEY, canonical_json(sorted(authorities)))

    def require_authority(self, state: ReadableState, signer: str) -> None:
        """Unauthorized unless `signer` is a governance authority (a chain with none has none)."""
        if signer not in self.authorities(state):
            raise Unauthorized(f"{signer} is not a governance authority of this chain")
