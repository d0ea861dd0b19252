"""`vitc bench model`: forward+backward images/s of a ViT_C model, its ViT_P twin and timm's ViT."""

import importlib.util
import logging

import torch
import torch.nn.functional as F
from torch import nn

from vitc.bench.timing import interleaved_rates
from vitc.errors import VitcError
from vitc.models.spec import get_spec, twin_name
from vitc.models.vit import VisionTransformer

log = logging.getLogger(__name__)


def _train_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    def step() -> None:
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)
    return step


def timm_twin(name: str) -> nn.Module | None:
    """timm's VisionTransformer with the dimensions of patchify model `name`, if timm is installed."""
    if importlib.util.find_spec("timm") is None:
        return None
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    s = get_spec(name)
    return TimmViT(img_size=s.image_size, patch_size=s.patch_size, embed_dim=s.width, depth=s.depth,
                   num_heads=s.heads, mlp_ratio=s.mlp_ratio, num_classes=s.num_classes)


def bench_model(name: str = "vit_c_1gf", batch: int = 16, iters: int = 3, rounds: int = 3,
                warmup: int = 1) -> dict[str, float]:
    """Images/s (forward+backward, fp32, this device) for `name`, its twin and timm's twin."""
    twin = twin_name(name)
    if twin is None:
        raise VitcError(f"model '{name}' has no registered twin to compare with")
    conv, patchify = (name, twin) if get_spec(name).stem == "conv" else (twin, name)
    torch.manual_seed(0)
    models: dict[str, nn.Module] = {conv: VisionTransformer(get_spec(conv)),
                                    patchify: VisionTransformer(get_spec(patchify))}
    if (reference := timm_twin(patchify)) is not None:
        models[f"timm:{patchify}"] = reference
    size = get_spec(conv).image_size
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 1000, (batch,))
    steps = {n: _train_step(m.train(), images, labels) for n, m in models.items()}
    log.info("timing %s at batch %d on %d thread(s)", ", ".join(steps), batch, torch.get_num_threads())
    return interleaved_rates(steps, batch, warmup, iters, rounds)


def format_model_bench(rates: dict[str, float]) -> str:
    names = list(rates)
    conv, patchify = names[0], names[1]
    lines = [f"{'model':<24} {'images/s':>9}"] + [f"{n:<24} {r:>9.1f}" for n, r in rates.items()]
    lines.append(f"ratio {conv}/{patchify}: {rates[conv] / rates[patchify]:.3f}")
    if len(names) > 2:
        lines.append(f"ratio ours/timm ({patchify}): {rates[patchify] / rates[names[2]]:.3f}")
    else:
        lines.append("timm is not installed: no comparison with timm")
    return "\n".join(lines)
