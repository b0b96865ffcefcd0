"""Training objectives, found by the name a checkpoint records (`diffusion_config["objective"]`).

    objective_for("sedd_absorb")             # the class: SeddObjective
    objective_for(model.config)              # the class of a checkpoint's recorded objective
    objective_for(...).from_model(model)     # its settings for that model (noising, loss, ELBO bound, greedy check)

A new objective is one module here: a subclass of `base.Objective` passed to `register_objective`.
"""

from ..diffusion_config import MASKED, OBJECTIVE_ALIASES, read_diffusion_config
from .base import Objective
from .block import BlockDiffusion
from .masked import MaskedDiffusion
from .sedd import SeddObjective

OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(objective: type[Objective]) -> type[Objective]:
    """Make `objective` the class of every name in `objective.names`."""
    for name in objective.names:
        OBJECTIVES[name] = objective
    return objective


register_objective(MaskedDiffusion)
register_objective(SeddObjective)
register_objective(BlockDiffusion)


def objective_for(name_or_config) -> type[Objective]:
    """The objective class of a name (a --diffusion_objective value or a recorded name), of a `diffusion_config`
    dict, or of a model config; ValueError for a config without `diffusion_config` (a causal LM)."""
    if isinstance(name_or_config, str):
        name = name_or_config
    else:
        diffusion_config = name_or_config if isinstance(name_or_config, dict) else read_diffusion_config(name_or_config)
        if diffusion_config is None:
            raise ValueError("this is a causal checkpoint (its config has no diffusion_config), not a diffusion LM.")
        name = diffusion_config.get("objective", MASKED)
    objective = OBJECTIVES.get(OBJECTIVE_ALIASES.get(name, name))
    if objective is None:
        raise ValueError(
            f"unknown diffusion objective {name!r}: registered are {', '.join(OBJECTIVES)} (and "
            f"{', '.join(OBJECTIVE_ALIASES)} for {MASKED})."
        )
    return objective


__all__ = ["OBJECTIVES", "Objective", "objective_for", "register_objective"]
