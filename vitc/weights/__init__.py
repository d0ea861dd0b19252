"""Weight formats outside DeepSpeed: safetensors export, timm's format and registry, init_from."""
