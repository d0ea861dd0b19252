"""Config sections -> the plain specs that `vitc.models` takes (models never see the config)."""

import dataclasses

from vitc.errors import VitcError
from vitc.models.spec import ViTSpec, get_spec
from vitc.schema import ModelConfig

# Config keys that map one-to-one onto ViTSpec fields when set (None = the registry's value).
_ARCH_KEYS = ("stem", "width", "depth", "heads", "mlp_ratio", "patch_size", "stem_channels",
              "stem_strides", "classifier", "norm_eps")


def model_spec(model: ModelConfig, num_classes: int | None = None) -> ViTSpec:
    """The ViTSpec a `model:` section describes. `num_classes` resolves `model.num_classes: auto`."""
    if model.num_classes == "auto":
        if num_classes is None:
            raise VitcError("model.num_classes is 'auto' but there is no dataset manifest to take "
                            "the class count from; set model.num_classes to an integer")
    else:
        num_classes = model.num_classes
    changed = {k: getattr(model, k) for k in _ARCH_KEYS if getattr(model, k) is not None}
    base = get_spec(model.name)
    spec = get_spec(model.name, **changed, num_classes=num_classes, image_size=model.image_size,
                    drop_path=model.drop_path, act_checkpoint=model.act_checkpoint)
    arch_diff = [f"{k}={_show(getattr(spec, k))}" for k in _ARCH_KEYS
                 if getattr(spec, k) not in (getattr(base, k), ())]
    name = model.name + (f"[{','.join(arch_diff)}]" if arch_diff else "")
    return dataclasses.replace(spec, name=name)


def _show(value) -> str:
    return "-".join(map(str, value)) if isinstance(value, tuple) else str(value)
