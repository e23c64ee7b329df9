"""``simple_reference_v3``: mpe2's simple reference batched in torch, PettingZoo's module convention plus
``vector_env(num_envs, **kwargs)`` (all copies in lockstep, torch tensors). The table is
:mod:`dni_envs.simple_reference`'s (the implementation); the version is mpe2's, whose
``simple_reference_v3`` it equals step for step.

| Import       | ``from dni_envs import simple_reference_v3``                                     |
|--------------|----------------------------------------------------------------------------------|
| Actions      | ``Discrete(50)``: move + 5 · word (5 moves, 10 words); with                      |
|              | ``continuous_actions=True`` ``Box(0, 1, (15,))``: 5 move components (force       |
|              | ``5 · (a2 − a1, a4 − a3)``), then the utterance (10)                             |
| Parallel API | Yes (``parallel_env``, one copy); AEC: ``env``; batched: ``vector_env``          |
| Agents       | ``agent_0``, ``agent_1``                                                         |
| Observation  | ``Box(21)``: velocity, landmarks, the other's goal colour, the other's word      |
| Reward       | mpe2's: ``local_ratio`` × own + (1 − ``local_ratio``) × mean of both             |
| Arguments    | ``local_ratio=0.5, max_cycles=25, continuous_actions=False, device="cpu"``       |
"""

from __future__ import annotations

from dni_envs._vector import versioned_vector
from dni_envs.simple_reference import SimpleReference

raw_env, parallel_env, env, vector_env = versioned_vector(SimpleReference)

__all__ = ["env", "parallel_env", "raw_env", "vector_env"]
