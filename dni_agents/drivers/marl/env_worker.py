"""One environment worker (``python -m dni_agents.drivers.marl.env_worker``, started by
:class:`~.workers.WorkerCopies`): reads ``(spec, env_kwargs, first, count)`` and then commands from stdin,
steps its copies ``first .. first + count - 1`` as one :class:`~.env.ParallelCopies`, answers on stdout
(pickled; anything an environment prints goes to stderr instead), and exits when stdin closes (the
learner closed it, or died). Its own session and no SIGINT: a Ctrl-C stops the learner at its next update
boundary, which still needs the environments."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback


def main() -> None:
    # Ctrl-C is the learner's to handle (it checkpoints at the next update, which needs us): ignore it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    commands = sys.stdin.buffer
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # an environment's prints must not corrupt the answers

    def answer(kind: str, payload: object) -> None:
        pickle.dump((kind, payload), answers, protocol=pickle.HIGHEST_PROTOCOL)
        answers.flush()

    try:
        spec, kwargs, first, count = pickle.load(commands)
        from .env import ParallelCopies, make_env_from

        copies = ParallelCopies([make_env_from(spec, kwargs) for _ in range(count)], spec)
        answer("ok", (copies.possible_agents, callable(getattr(copies, "message_sources", None))))
        while True:
            try:
                command, payload = pickle.load(commands)
            except EOFError:  # the learner closed our stdin (or died): done
                return
            if command == "reset":
                answer("ok", copies.reset(seed=payload + first))
            elif command == "step":
                answer("ok", copies.step(payload))
            elif command == "sources":
                answer("ok", copies.message_sources())
            else:
                raise ValueError(f"unknown command {command!r}")
    except (BrokenPipeError, KeyboardInterrupt):
        return
    except Exception:  # noqa: BLE001 — every error goes back to the learner, which raises it
        try:
            answer("error", traceback.format_exc())
        except OSError:
            pass


if __name__ == "__main__":
    main()
