"""``digits_referential_v0``: the referential game on scikit-learn's 8×8 digits, PettingZoo's module
convention. The table is :mod:`dni_envs.digits_referential`'s (the implementation; a change in its
behaviour gets a new version here). ``vector_env(num_envs, **kwargs)`` deals every copy's game in one
numpy call.

| Import             | ``from dni_envs import digits_referential_v0``                               |
|--------------------|------------------------------------------------------------------------------|
| Actions            | sender: ``Box(-1, 1, (message_size,))`` message; receiver: ``Discrete(K)``   |
| Parallel API       | Yes (``parallel_env``); AEC: ``env`` (``parallel_to_aec``)                   |
| Agents             | ``agents = ["sender", "receiver"]``                                          |
| Episode length     | 1 step                                                                       |
| Sender obs         | ``Box(0, 1, (64,), float32)``                                                |
| Receiver obs       | ``Box(low, 1, (K*64 + message_size,), float32)``, the message last           |
| Rewards            | 1.0 to both agents when the receiver picks the target, else 0.0              |
| Private info       | ``infos["sender"]["target"]``: the target class (0-9)                        |
"""

from __future__ import annotations

from dni_envs._base import versioned
from dni_envs.digits_referential import DigitsReferential, vector_env

raw_env, parallel_env, env = versioned(DigitsReferential)

__all__ = ["env", "parallel_env", "raw_env", "vector_env"]
