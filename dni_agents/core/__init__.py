"""The DNI core: messages, transports, utility models, interfaces, agents and the system clock.

Pure torch. Nothing here imports a driver, an environment, a data set or the CLI.
"""

from .channel import ChannelModel
from .interface import MODES, Interface, Mode
from .layer import DNI
from .message import InProcess, Message, Transport
from .models import SyntheticInputModel, UtilityModel
from .nonfinite import NonFiniteError, OnNonFinite
from .speedups import SpeedUps
from .system import Agent, System, Tick

__all__ = [
    "MODES",
    "DNI",
    "Agent",
    "ChannelModel",
    "InProcess",
    "Interface",
    "Message",
    "Mode",
    "NonFiniteError",
    "OnNonFinite",
    "SyntheticInputModel",
    "SpeedUps",
    "System",
    "Tick",
    "Transport",
    "UtilityModel",
]
