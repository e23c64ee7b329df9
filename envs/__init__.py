"""Our own PettingZoo environments (import name: dni_envs).

As in PettingZoo, each is used through a versioned module (``dni_envs.switch_riddle_v0``,
``referential_v0``, ``digits_referential_v0``, ``reference_narrow_v0``) with ``parallel_env``, ``env``
(AEC) and ``raw_env``, and its documentation table in the docstring; the unversioned module beside it is
the implementation."""

from dni_envs.digits_referential import DigitsReferential
from dni_envs.reference_narrow import ReferenceNarrow
from dni_envs.referential import ReferentialGame
from dni_envs.switch_riddle import SwitchRiddle

__all__ = ["DigitsReferential", "ReferenceNarrow", "ReferentialGame", "SwitchRiddle"]
