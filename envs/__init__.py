"""Our own PettingZoo environments (import name: dni_envs)."""

from dni_envs.digits_referential import DigitsReferential
from dni_envs.reference_narrow import ReferenceNarrow
from dni_envs.referential import ReferentialGame
from dni_envs.switch_riddle import SwitchRiddle

__all__ = ["DigitsReferential", "ReferenceNarrow", "ReferentialGame", "SwitchRiddle"]
