"""Our own PettingZoo environments (import name: dni_envs).

As in PettingZoo, each is used through a versioned module (``dni_envs.switch_riddle_v0``,
``referential_v0``, ``digits_referential_v0``, ``reference_narrow_v0``, ``simple_speaker_listener_v4``,
``simple_reference_v3``, ``simple_crypto_v3``) with ``parallel_env``, ``env`` (AEC) and ``raw_env``, and its
documentation table in the docstring; the unversioned module beside it is the implementation. Some also offer
``vector_env(num_envs, **kwargs)``, all copies stepped in one call (``simple_speaker_listener_v4``,
``simple_reference_v3`` and ``simple_crypto_v3``: mpe2's scenarios batched in torch, equal to mpe2 step for
step; see _vector.py)."""

from dni_envs.digits_referential import DigitsReferential
from dni_envs.reference_narrow import ReferenceNarrow
from dni_envs.referential import ReferentialGame
from dni_envs.simple_crypto import SimpleCrypto
from dni_envs.simple_reference import SimpleReference
from dni_envs.simple_speaker_listener import SimpleSpeakerListener
from dni_envs.switch_riddle import SwitchRiddle

__all__ = ["DigitsReferential", "ReferenceNarrow", "ReferentialGame", "SimpleCrypto", "SimpleReference",
           "SimpleSpeakerListener", "SwitchRiddle"]
