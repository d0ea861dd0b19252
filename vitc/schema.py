"""Every config key vitc knows, with its type and default: the one place defaults live.

A YAML file holds only what differs from here. Each section is a dataclass; the loader in
`vitc.config` rejects unknown keys and wrong types by reading these annotations.
"""

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ModelConfig:
    """The network. `name` picks a registry entry (Table 1); any other key set here overrides it."""

    name: str = "vit_c_1gf"
    stem: Literal["patchify", "conv"] | None = None
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    mlp_ratio: float | None = None
    patch_size: int | None = None
    stem_channels: list[int] | None = None
    stem_strides: list[int] | None = None
    classifier: Literal["token", "pool"] | None = None
    # `auto` takes the class count from the training shards' manifest.
    num_classes: int | Literal["auto"] = 1000
    image_size: int = 224
    drop_path: float = 0.0
    act_checkpoint: bool = False


@dataclass
class AuditConfig:
    """Flop/param audit settings."""

    # The paper holds conv-stem and patchify twins within a few percent of each other (§3.1).
    parity_tolerance: float = 0.03


@dataclass
class Config:
    """The whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
