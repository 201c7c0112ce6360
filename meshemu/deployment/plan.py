"""A run in the emulated mesh, decided before anything starts: one frozen plan, checked once.

It holds what to serve (a :class:`~meshemu.serving.job.ServingJob` whose
shards have no addresses yet), where the client sits, how ranks are placed,
how links are shaped, how fast the constellation moves, and which node pairs
are probed. The experiment runner builds it from an experiment file,
``meshemu generate --constellation`` from its flags; :func:`~meshemu.deployment.deploy`
carries it out unchanged.

>>> from meshemu.serving.job import Request, ServingJob, ServingPlan
>>> run = MeshRun(ServingJob(ServingPlan("tiny:llama:0", pp=2), (Request((1, 2)),)), ground_station="Paris",
...               shaping=ShapingConfig(rate_bps=20e6, loss=0.01), shaper="netem")
>>> run.n_ranks, run.shaping.rate_bps
(2, 20000000.0)
>>> MeshRun(run.job, ground_station="Paris", shaper="delayline", shaping=ShapingConfig(loss=0.1))
Traceback (most recent call last):
...
meshemu.errors.InputError: the delayline shaper does delay only: drop --rate-mbps/--loss (rate_mbps, loss) or use netem
"""

from __future__ import annotations

from dataclasses import dataclass

from meshemu.deployment.faults import Fault
from meshemu.emulation.naming import DEFAULT_PREFIX
from meshemu.emulation.shaping import ShapingConfig, check_backend
from meshemu.errors import InputError
from meshemu.routing.states import check_route_mode
from meshemu.serving.job import ServingJob
from meshemu.serving.placement import check_strategy

SHAPERS = ("auto", "netem", "delayline", "none")


@dataclass(frozen=True)
class MeshRun:
    job: ServingJob  # what the client does; the deployment fills in the shards' addresses
    ground_station: str  # where the client runs (a city, or a station's short name)
    placement: str = "plane"  # ranks to satellites: plane, spread, nearest, list:NAMES
    routes: str = "auto"  # every node to every other (all), towards the run's destinations, or auto (by size)
    shaper: str = "auto"  # link delay backend: auto, netem, delayline, none
    shaping: ShapingConfig = ShapingConfig()  # rate and loss of every link (netem)
    time_scale: float = 1.0  # how much faster than real time the constellation moves
    start_step: int = 0
    probes: tuple[tuple[str, str], ...] = ()  # node pairs whose RTT and path are measured every step
    probe_client: bool = True  # also probe the client's station to rank 0
    prefix: str = DEFAULT_PREFIX  # of every namespace (what 'meshemu clean' removes after a kill -9)
    faults: tuple[Fault, ...] = ()  # what fails when, in series time after the window's start
    acquisition_s: float = 0.0  # a link that comes into range carries traffic only this long after

    def __post_init__(self):
        check_strategy(self.placement)
        check_route_mode(self.routes)
        if self.shaper not in SHAPERS:
            raise InputError(f"unknown shaper {self.shaper!r}: use {', '.join(SHAPERS)}")
        check_backend(self.shaper, self.shaping)
        if not 1e-6 <= self.time_scale <= 1e6:
            raise InputError(f"time scale must be within [1e-6, 1e6] (1 is real time), got {self.time_scale}")
        if not (0 <= self.acquisition_s < 1e6):
            raise InputError(f"links.acquisition_s must be 0 s or more, got {self.acquisition_s}")
        if self.start_step < 0:
            raise InputError(f"start step must be 0 or more, got {self.start_step}")

    @property
    def n_ranks(self) -> int:
        return self.job.plan.n_ranks
