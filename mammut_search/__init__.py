"""mammut-search: search image collections with MaMMUT, one model that retrieves images and captions them."""

from mammut_search.inference import MammutModel, default_device, load_model
from mammut_search.model.config import ImageEncoderConfig, MammutConfig
from mammut_search.errors import CheckpointError, ImageLoadError, IndexStoreError, UserError

__all__ = [
    "MammutModel", "load_model", "default_device", "MammutConfig", "ImageEncoderConfig",
    "UserError", "CheckpointError", "ImageLoadError", "IndexStoreError",
]
__version__ = "0.1.0"
