"""vitc: Vision Transformers with a convolutional stem (ViT-C), pretrained at scale."""

__version__ = "0.1.0"
