"""``referential_v0``: the two-step Lewis signalling game, PettingZoo's module convention.

| Import             | ``from dni_envs import referential_v0``                                      |
|--------------------|------------------------------------------------------------------------------|
| Actions            | sender: ``Box(-1, 1, (message_size,))`` message; receiver: ``Discrete(n_candidates)`` |
| Parallel API       | Yes (``parallel_env``); AEC: ``env`` (``parallel_to_aec``)                   |
| Agents             | ``agents = ["sender", "receiver"]``                                          |
| Episode length     | 2 steps: the sender speaks at 0, the receiver picks at 1                     |
| Sender obs         | ``Box(0, 1, (n_features + 1,), float32)``: the target's features, phase      |
| Receiver obs       | ``Box(low, 1, (n_candidates·n_features + 1 + message_size,))``, message last |
| Reward             | 1.0 to both when the receiver picks the target, else 0.0                     |
| Private info       | ``infos["sender"]["target"]``: the target's index                            |
| Arguments          | ``n_candidates=5, n_features=8, message_size=4, render_mode=None``           |

The implementation is :mod:`dni_envs.referential`; a change in its behaviour gets a new version here.
"""

from __future__ import annotations

from dni_envs._base import versioned
from dni_envs.referential import ReferentialGame

raw_env, parallel_env, env = versioned(ReferentialGame)

__all__ = ["env", "parallel_env", "raw_env"]
