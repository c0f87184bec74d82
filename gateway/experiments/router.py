"""`core.experiment_ports.ModelRouter` over an experiment configuration: each bid's arm, version, scorer,
and whether it is sampled for shadow scoring. Swapped whole (`install`) when the configuration changes:
a bid reads one immutable plan, never half of an old one and half of a new one.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.core.experiment_ports import ModelRoute
from gateway.core.ports import Scorer
from gateway.experiments.assignment import ArmAssigner
from gateway.experiments.config import ExperimentConfig

__all__ = ["ExperimentRouter", "arm_label"]


def arm_label(config: ExperimentConfig, arm: str) -> str:
    """What ext.experiment and the metrics' `arm` label say: arms of successive experiments stay apart."""
    return f"{config.name}/{arm}"


@dataclass(frozen=True, slots=True)
class _Plan:
    config: ExperimentConfig
    assigner: ArmAssigner
    live: dict[str, ModelRoute]  # arm name -> its route without shadow
    shadowed: dict[str, ModelRoute]  # arm name -> its route with the shadow version
    sample: float


class ExperimentRouter:
    def __init__(
        self, config: ExperimentConfig, scorers: Mapping[str, Scorer], rng: random.Random | None = None
    ) -> None:
        self._rng = rng or random.Random()
        self._plan = self._build(config, scorers)

    @property
    def config(self) -> ExperimentConfig:
        return self._plan.config

    def install(self, config: ExperimentConfig, scorers: Mapping[str, Scorer]) -> None:
        """Route by `config` from the next bid on; `scorers` must hold every version it names."""
        self._plan = self._build(config, scorers)

    def route(self, user_key: str | None, request_id: str) -> ModelRoute:
        plan = self._plan
        arm = plan.assigner.assign(user_key, request_id)
        if plan.sample > 0 and self._rng.random() < plan.sample:
            return plan.shadowed[arm.name]
        return plan.live[arm.name]

    @staticmethod
    def _build(config: ExperimentConfig, scorers: Mapping[str, Scorer]) -> _Plan:
        missing = config.versions - set(scorers)
        if missing:
            raise ValueError(f"no scorer for model versions {sorted(missing)}")
        live = {  # a 0 % arm is never assigned (ArmAssigner), and its version need not be loaded
            arm.name: ModelRoute(arm_label(config, arm.name), arm.version, scorers[arm.version])
            for arm in config.arms
            if arm.weight > 0
        }
        shadow = config.shadow
        shadowed = {
            name: ModelRoute(route.arm, route.version, route.scorer, shadow.version)
            for name, route in live.items()
            if shadow is not None and shadow.version != route.version  # scoring a version twice tells nothing
        }
        shadowed = {name: shadowed.get(name, route) for name, route in live.items()}
        sample = shadow.sample if shadow is not None else 0.0
        return _Plan(config, ArmAssigner.build(config), live, shadowed, sample)
