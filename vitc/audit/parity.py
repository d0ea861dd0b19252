"""Flop parity between a conv-stem model and its patchify twin (the paper's §3 design rule)."""

from dataclasses import dataclass, replace

from vitc.models.cost import model_cost
from vitc.models.spec import ViTSpec


@dataclass(frozen=True)
class ParityResult:
    conv_name: str
    conv_flops: int
    patchify_name: str
    patchify_flops: int
    tolerance: float

    @property
    def relative_diff(self) -> float:
        return (self.conv_flops - self.patchify_flops) / self.patchify_flops

    @property
    def ok(self) -> bool:
        return abs(self.relative_diff) <= self.tolerance

    def describe(self) -> str:
        verdict = "within" if self.ok else "exceeds"
        return (f"{self.conv_name} {self.conv_flops / 1e9:.3f} GF vs {self.patchify_name} "
                f"{self.patchify_flops / 1e9:.3f} GF: {self.relative_diff:+.2%} {verdict} "
                f"the {self.tolerance:.1%} tolerance")


def choose_conv_depth(patchify: ViTSpec, conv: ViTSpec) -> int:
    """The conv-stem depth whose flops are closest to `patchify`'s (ties: fewer blocks)."""
    target = model_cost(patchify).flops
    depths = range(1, patchify.depth + 1)
    return min(depths, key=lambda d: (abs(model_cost(replace(conv, depth=d)).flops - target), d))
