"""Network blocks shared by methods."""

from lightning_modules.nets.conv import ConvDecoder, ConvEncoder, keras_batchnorm

__all__ = ["ConvDecoder", "ConvEncoder", "keras_batchnorm"]
