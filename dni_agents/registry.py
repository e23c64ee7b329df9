"""Drivers and benches by name: ours, and any that an installed package declares, so a new driver needs no
edit of this package (BenchMARL's registry, with Python's entry points as the table).

A driver is a module (or package) with:

* ``SECTION``: the pydantic model of its config section, the key named like the driver (``marl:``), a
  subclass of :data:`dni_agents.config.Section` (unknown keys are one-line errors); optional, a driver
  without settings of its own has none;
* ``AGENT_CONFIG``: the pydantic model of one ``agents`` entry, when its agents have settings of their own (a
  subclass of ``AgentConfig``; marl's: members, policy, network); optional;
* ``agent_names(cfg) -> list[str]``: the agents a run of it has (optional: the config's ``agents`` names);
* ``check_config(cfg)``: checks across its section and the shared keys, raising ``ConfigError`` (optional);
* ``train(cfg, run_dir, log=True, progress=True, resume=None, stop=None) -> dict`` and
  ``evaluate(run_dir) -> dict``; optionally ``train_distributed`` (same arguments, ``--procs N``),
  ``placement_for(cfg, world_size)`` and ``bench(quick, out, seeds, overrides, only)``.

``dni-agents train`` makes a new run's folder (``<log.dir>/<name>``, ``--run-dir``; ``-2``, ``-3``, ... when
it exists) and writes the resolved ``config.yaml`` into it before it calls ``train`` with it as ``run_dir``
(``--resume``: the run's own folder, and ``config.yaml`` rewritten once the run has gone on); the driver
writes its checkpoint and results there, and ``dni-agents eval RUN_DIR`` loads that config to pick the driver
and calls its ``evaluate(RUN_DIR)``. A start that fails before anything is written leaves no folder. The
JSON line ``train`` prints is the dict ``train`` returns, with ``run_dir`` added if it has none. Helpers for
building agents and interfaces from the config: :mod:`dni_agents.drivers` (``build_interface``,
``agent_optimizer``); a whole example: ``tests/user_driver.py``.

A package adds a driver with an entry point in its ``pyproject.toml``::

    [project.entry-points."dni_agents.drivers"]
    mydriver = "mypkg.mydriver"

and a bench that is no one driver's under ``"dni_agents.benches"``. Nothing here is imported eagerly and
nothing is cached: the table is read from the installed metadata when asked.
"""

from __future__ import annotations

from importlib.metadata import entry_points

DRIVER_GROUP = "dni_agents.drivers"
BENCH_GROUP = "dni_agents.benches"
BUILTIN_DRIVERS = {
    "ff": "dni_agents.drivers.ff",
    "hier": "dni_agents.drivers.hier",
    "marl": "dni_agents.drivers.marl",
    "rnn": "dni_agents.drivers.rnn",
}
BUILTIN_BENCHES = {"parallel": "dni_agents.benches.parallel", "comm": "dni_agents.benches.comm",
                   "speed": "dni_agents.benches.speed"}


def _declared(group: str) -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=group)}


def drivers() -> dict[str, str]:
    """Driver name -> module, ours first (an installed package cannot shadow one of ours)."""
    return {**_declared(DRIVER_GROUP), **BUILTIN_DRIVERS}


def benches() -> dict[str, str]:
    """Bench name -> module of the benches that are no one driver's."""
    return {**_declared(BENCH_GROUP), **BUILTIN_BENCHES}
