"""`vitc bench model`: forward+backward images/s of a ViT_C model and its ViT_P twin, eager and
compiled (torch.compile, inductor, as `train.compile` does), against timm's eager ViT.

Every contender runs in its own fresh process, rounds interleaved, the same warm-up for all
(`vitc.bench.timing`); a compiled contender's compile time lands in its start-up, printed apart.
"""

import importlib.util
import logging

from vitc.bench.timing import Contender, Timing, paired_ratio, time_in_processes
from vitc.errors import VitcError
from vitc.models.spec import get_spec, twin_name

log = logging.getLogger(__name__)


def _train_step(model, batch: int, image_size: int):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    images = torch.randn(batch, 3, image_size, image_size)
    labels = torch.randint(0, 1000, (batch,))
    model.train()

    def step() -> int:
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return batch
    return step


def vitc_step(name: str, batch: int, compiled: bool):
    """Our model `name`; compiled in place (`nn.Module.compile`), as `train.compile` compiles it."""
    import torch

    from vitc.models.vit import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(get_spec(name))
    if compiled:
        model.compile()
    return _train_step(model, batch, get_spec(name).image_size)


def timm_step(name: str, batch: int):
    """timm's VisionTransformer with the dimensions of patchify model `name`, eager."""
    import torch
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    s = get_spec(name)
    torch.manual_seed(0)
    model = TimmViT(img_size=s.image_size, patch_size=s.patch_size, embed_dim=s.width, depth=s.depth,
                    num_heads=s.heads, mlp_ratio=s.mlp_ratio, num_classes=s.num_classes)
    return _train_step(model, batch, s.image_size)


def bench_model(name: str = "vit_c_1gf", batch: int = 16, iters: int = 3, rounds: int = 3,
                processes: int = 1, warmup: int = 2) -> dict[str, Timing]:
    """Images/s (forward+backward, fp32, CPU) of `name` and its twin, eager and compiled, and of
    timm's eager twin when timm is installed. The warm-up covers compilation (forward and backward)."""
    twin = twin_name(name)
    if twin is None:
        raise VitcError(f"model '{name}' has no registered twin to compare with")
    conv, patchify = (name, twin) if get_spec(name).stem == "conv" else (twin, name)
    contenders = [Contender(f"{n}{' compiled' * c}", f"{__name__}:vitc_step", {"name": n, "batch": batch, "compiled": c})
                  for c in (False, True) for n in (conv, patchify)]
    if importlib.util.find_spec("timm") is not None:
        contenders.append(Contender(f"timm:{patchify}", f"{__name__}:timm_step", {"name": patchify, "batch": batch}))
    log.info("timing %s at batch %d, each in its own process", ", ".join(c.name for c in contenders), batch)
    return time_in_processes(contenders, warmup, iters, rounds, processes)


def format_model_bench(timings: dict[str, Timing]) -> str:
    names = list(timings)
    conv, patchify = names[0], names[1]
    spread = next(iter(timings.values())).processes > 1
    lines = [f"{'model':<28} {'images/s':>9} {'start-up s':>11}" + f" {'process spread':>15}" * spread]
    lines += [f"{n:<28} {t.rate:>9.1f} {t.startup_s:>11.0f}" + f" {t.spread:>+15.1%}" * spread
              for n, t in timings.items()]
    t = timings
    lines.append(f"ratio {conv}/{patchify}: eager {paired_ratio(t[conv], t[patchify]):.3f}, compiled "
                 f"{paired_ratio(t[conv + ' compiled'], t[patchify + ' compiled']):.3f}")
    reference = f"timm:{patchify}"
    if reference in t:
        lines.append(f"ratio ours/timm eager ({patchify}): eager {paired_ratio(t[patchify], t[reference]):.3f}, "
                     f"compiled {paired_ratio(t[patchify + ' compiled'], t[reference]):.3f}")
    else:
        lines.append("timm is not installed: no comparison with timm")
    lines.append("start-up = building the model and the warm-up steps (compiled: the compile time)")
    return "\n".join(lines)
