"""The reference returns of simple reference (``dni_envs.simple_reference_v3``, mpe2's game batched) that a
learned protocol sits between, from scripted movers (no learning, so they depend on nothing but the game):

``random``      uniformly random moves
``centroid``    each agent steers to the centre of the three landmarks: the best a mover can do knowing
                nothing of its goal (no communication), up to the steering
``oracle``      each agent steers to its own goal landmark, as if the other agent's message had told it
                perfectly (perfect communication)

Steering: each step the move (no-op, left, right, down, up) whose push best matches ``gain · offset −
velocity`` (a damped approach; ``--gain`` is tuned on the oracle and the best is kept for both). Reports
agent_0's return and the mean of both (the driver's ``mean_return``) over ``--episodes`` held-out episodes
(seeds from 10**6, which no training run uses). JSON to ``--out``.

    python scripts/reference_bounds.py --out docs/results/reference_bounds.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from dni_envs.simple_reference import SimpleReference

MOVES = torch.tensor([[0.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])  # mpe2's order


def steer(offset: torch.Tensor, velocity: torch.Tensor, gain: float) -> torch.Tensor:
    """The move whose push best matches the wanted change of velocity (no-op if none helps)."""
    want = gain * offset - velocity  # (E, 2)
    return (want @ MOVES.T).argmax(-1)


def play(kind: str, episodes: int, gain: float, seed: int) -> dict[str, float]:
    env = SimpleReference(episodes)
    obs, _ = env.reset(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(episodes, 2)
    for _ in range(env.max_cycles):
        actions = {}
        for j, agent in enumerate(env.possible_agents):
            o = obs[agent]
            velocity, landmarks = o[:, :2], o[:, 2:8].view(-1, 3, 2)  # landmarks relative to the agent
            if kind == "random":
                move = torch.randint(5, (episodes,), generator=generator)
            elif kind == "centroid":
                move = steer(landmarks.mean(1), velocity, gain)
            else:  # its own goal: the landmark the *other* agent's colour names
                own = env.goal[:, 1 - j]
                move = steer(landmarks[torch.arange(episodes), own], velocity, gain)
            actions[agent] = move.numpy()  # word 0: nobody listens
        obs, rewards, *_ = env.step(actions)
        total += torch.stack([rewards[a] for a in env.possible_agents], 1)
    return {"agent_0_return": float(total[:, 0].mean()), "mean_return": float(total.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    seed = 10**6
    gains = [0.5, 1.0, 2.0, 3.0, 5.0, 8.0]
    tuned = {g: play("oracle", args.episodes, g, seed)["mean_return"] for g in gains}
    gain = max(tuned, key=tuned.get)
    result = {"env": "dni_envs.simple_reference_v3", "episodes": args.episodes, "seed": seed, "gain": gain,
              "oracle_by_gain": tuned,
              **{kind: play(kind, args.episodes, gain, seed) for kind in ("random", "centroid", "oracle")}}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
