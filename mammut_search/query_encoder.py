"""Queries through the model: text and image latents and captions, one model call at a time (bounded memory, no
oversubscribed CPU threads, and a GPU used in turn), image queries through the safe loader."""

from __future__ import annotations

import threading

import numpy as np

from mammut_search import query as q
from mammut_search.image_access import QueryImages


class QueryEncoder:
    """The model as a Searcher's queries use it; thread-safe."""

    def __init__(self, model):
        from mammut_search.inference import decode_side

        self.model = model
        self.lock = threading.RLock()  # held around every model call
        self.images = QueryImages(decode_side(model.config.image_encoder))

    def text(self, text: str) -> np.ndarray:
        """The latent (1 l) of a text query."""
        with self.lock:
            return self.model.encode_text([q.prepare_text(self.model, text)[0]]).numpy()

    def image(self, image, *, caption_beam_width: int | None = None) -> tuple[np.ndarray, str | None]:
        """(latent (1 l), caption when `caption_beam_width` is given) of an image query, from one encoding."""
        pixels = self.model.preprocess([self.images.load(image)])
        with self.lock:
            features = self.model.image_features(pixels)
            latent = self.model.latents_from_features(features).numpy()
            caption = (self.model.captions_from_features(features, beam_width=caption_beam_width)[0]
                       if caption_beam_width else None)
        return latent, caption

    def caption(self, image, beam_width: int) -> str:
        """The generated caption of an image query."""
        pixels = self.model.preprocess([self.images.load(image)])
        with self.lock:
            return self.model.caption(pixels, beam_width=beam_width)[0]
