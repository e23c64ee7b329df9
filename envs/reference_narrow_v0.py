"""``reference_narrow_v0``: mpe2's simple reference with the words taken away, PettingZoo's module
convention. The table is :mod:`dni_envs.reference_narrow`'s (the implementation; a change in its
behaviour gets a new version here).

| Import       | ``from dni_envs import reference_narrow_v0``                                     |
|--------------|----------------------------------------------------------------------------------|
| Actions      | Discrete(5): no-op, left, right, down, up (mpe2's moves, no words)               |
| Parallel API | Yes (``parallel_env``); AEC: ``env`` (``parallel_to_aec``)                       |
| Agents       | ``agent_0``, ``agent_1``                                                         |
| Observation  | Box(11 + slot, + 3 with ``oracle``): velocity, landmarks, other's goal, slot     |
| Reward       | mpe2's, each agent paid for how well it guided the other                         |
| Arguments    | ``slot=2, oracle=False, max_cycles=25, local_ratio=0.5``                         |
| Vectorised   | ``vector_env(num_envs, ...)``: all copies in one torch call, equal step by step  |
"""

from __future__ import annotations

from dni_envs._base import versioned
from dni_envs.reference_narrow import ReferenceNarrow, vector_env

raw_env, parallel_env, env = versioned(ReferenceNarrow)

__all__ = ["env", "parallel_env", "raw_env", "vector_env"]
