"""The one safe image loader: every image the product reads (indexing, search uploads, evaluation) comes here.

What it guarantees: an RGB image, EXIF orientation applied, transparency composited onto white, 16-bit and
CMYK pixels converted without clipping, the first frame of an animation, and the whole file decoded (so a
truncated file is refused, not half-read). What it refuses, with `ImageLoadError("path: reason")`: missing,
empty, unreadable or non-regular files (a directory, a FIFO), files that are not images of a supported format,
truncated or corrupt data, and images with more pixels than `max_pixels` (checked from the header, before any
pixel is decoded, so a decompression bomb costs nothing).

Callers that only need the image at a model's input size pass `min_side`: a JPEG is then decoded straight at
1/2, 1/4 or 1/8 scale (DCT scaling, much cheaper than decoding every pixel), never with a side below
`min_side`. The image encoders' preprocessing reduces other large images by the same powers of two, so a
file gives nearly the same model input whichever way it was loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from typing import IO, Iterator

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from mammut_search.errors import ImageLoadError
from mammut_search.files import NotRegularFileError, open_regular

# 128 million pixels: above the 108 MP of current phone cameras, and about 384 MB once decoded to RGB.
DEFAULT_MAX_PIXELS = 128_000_000

IMAGE_EXTENSIONS: frozenset[str] = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"})

# Pillow decoders we let near user files (JPEG includes the MPO files phones write). Formats that run external
# programs (EPS through Ghostscript) or that we never index stay out.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "DIB", "TIFF")

# Our own pixel cap replaces Pillow's warning (issued from 89 Mpx), so it would only repeat ours.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_WHITE = (255, 255, 255)
_SWAPPED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that exchange width and height
_EXIF_ORIENTATION_TAG = 0x0112


def load_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_side: int | None = None) -> Image.Image:
    """Decode the image file at `path` into an RGB image (EXIF-transposed, composited on white), or raise
    ImageLoadError("path: reason"). With `min_side`, a JPEG may be decoded at reduced scale (sides ≥ min_side)."""
    return load_image_with_size(path, max_pixels=max_pixels, min_side=min_side)[0]


def load_image_with_size(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                         min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """`load_image`, and the (width, height) of the full upright image (the image itself is smaller when
    `min_side` let it be decoded at reduced scale)."""
    name = _display(path)
    with _read_errors(name), _open_regular(path, name) as f:
        return _decode(f, name, max_pixels, min_side)


def load_image_and_sha256(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                          min_side: int | None = None) -> tuple[Image.Image, tuple[int, int], str]:
    """`load_image_with_size`, and the sha256 of exactly the bytes that were decoded (read once into memory),
    so that a file rewritten while it is indexed can never pair one content's hash with another's pixels."""
    data, _ = read_image_file(path)
    image, size = _decode(io.BytesIO(data), _display(path), max_pixels, min_side)
    return image, size, hashlib.sha256(data).hexdigest()


def read_image_file(path: str | os.PathLike) -> tuple[bytes, os.stat_result]:
    """The bytes of a non-empty regular file (no further than its size when opened: a file still being written
    is cut there) and its stat, for callers that check what they read before decoding it with open_image_bytes;
    ImageLoadError("path: reason") otherwise."""
    name = _display(path)
    with _read_errors(name), _open_regular(path, name) as f:
        info = os.fstat(f.fileno())
        return f.read(info.st_size), info


def open_image_bytes(data: bytes, *, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS,
                     min_side: int | None = None) -> Image.Image:
    """Decode an image held in memory (an upload) like `load_image`; errors name it `name`."""
    if not data:
        raise _error(name, "empty (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels, min_side)[0]


def image_size(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) as `load_image` would return it (EXIF orientation included), read from the header only;
    refuses what `load_image` refuses from the header alone."""
    name = _display(path)
    with _read_errors(name), _open_regular(path, name) as f, _open(f, name, max_pixels) as image:
        if image.size[0] * image.size[1] > max_pixels:
            raise _too_many_pixels(name, image.size, max_pixels)
        width, height = image.size
        if _orientation(image) in _SWAPPED_ORIENTATIONS:
            width, height = height, width
        return width, height


@contextlib.contextmanager
def _read_errors(name: str) -> Iterator[None]:
    """Turn the OS errors of reading a file into ImageLoadError naming it."""
    try:
        yield
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise _error(name, "no such file") from None
    except NotRegularFileError as e:
        raise _error(name, e.strerror) from None
    except PermissionError:
        raise _error(name, "permission denied; make the file readable") from None
    except OSError as e:
        raise _error(name, f"cannot read the file ({e.strerror or e})") from None


def has_image_extension(path: str | os.PathLike) -> bool:
    """Whether the file name ends in one of IMAGE_EXTENSIONS (any case)."""
    suffix = os.path.splitext(os.fsdecode(os.fspath(path)))[1]
    return suffix[1:].lower() in IMAGE_EXTENSIONS


# ----- decoding -----

def _decode(f: IO[bytes], name: str, max_pixels: int,
            min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Open, size-check, fully decode and normalise one image from a binary file object; also returns the
    full upright size."""
    image = _open(f, name, max_pixels)
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels(name, (width, height), max_pixels)
    if width == 0 or height == 0:
        raise _error(name, f"image has no pixels ({width}×{height})")
    try:
        image.seek(0)  # animations and multi-page files: the first frame
        if min_side is not None and image.format == "JPEG":
            # DCT scaling: Pillow picks the largest of 1/2, 1/4, 1/8 that keeps both sides ≥ min_side
            image.draft(None, (min_side, min_side))
        image.load()  # decodes everything now, so truncated or corrupt data fails here, not later
    except Image.DecompressionBombError:  # a frame larger than the header said
        raise _too_many_pixels(name, None, max_pixels) from None
    except MemoryError:
        raise _error(name, "not enough memory to decode it") from None
    except Exception as e:  # Pillow signals damaged data with OSError, SyntaxError, ValueError, struct.error...
        raise _error(name, f"truncated or corrupt image data ({_reason(e)})") from None
    orientation = _orientation(image)
    if min_side is not None:  # before turning and converting, which copy every pixel
        image = _reduced(image, min_side)
    upright = _transposed(image, orientation)
    turned = upright is not image and orientation in _SWAPPED_ORIENTATIONS
    full_size = (height, width) if turned else (width, height)
    try:
        return to_rgb(upright), full_size
    except ImageLoadError:
        raise
    except Exception as e:
        raise _error(name, f"cannot convert {image.mode} pixels to RGB ({_reason(e)})") from None


def _open(f: IO[bytes], name: str, max_pixels: int) -> Image.Image:
    """Image.open restricted to ALLOWED_FORMATS, with its errors turned into ImageLoadError."""
    try:
        return Image.open(f, formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise _error(name, "not an image (unrecognised or unsupported format; supported: "
                           + ", ".join(sorted(IMAGE_EXTENSIONS)) + ")") from None
    except Image.DecompressionBombError:  # Pillow's own hard cap, met before ours can look at the header
        raise _too_many_pixels(name, None, min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))) from None
    except OSError as e:
        raise _error(name, f"cannot read the file ({e.strerror or _reason(e)})") from None
    except Exception as e:  # a malformed header can make a plugin raise anything
        raise _error(name, f"corrupt image header ({_reason(e)})") from None


def _reduced(image: Image.Image, min_side: int) -> Image.Image:
    """A large image box-reduced by the largest power of two that keeps both sides ≥ `min_side` (as the
    encoders' preprocessing would do next), so that no full-size copy of its pixels is ever made. Modes that
    Pillow cannot reduce (16-bit grey, palettes, bilevel) are first turned into 8-bit ones."""
    fits = min(image.size) // min_side
    factor = 1 << (fits.bit_length() - 1) if fits > 1 else 1
    if factor == 1:
        return image
    if image.mode.startswith("I;16"):
        image = Image.fromarray(_to_uint8(np.asarray(image)), mode="L")
    elif image.mode in ("P", "1"):
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    return image.reduce(factor)


_TRANSPOSES = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}


def _transposed(image: Image.Image, orientation: int) -> Image.Image:
    """The image turned upright by its EXIF orientation (read before any reduction; unknown values: as stored)."""
    method = _TRANSPOSES.get(orientation)
    return image.transpose(method) if method is not None else image


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:
        return 1


def to_rgb(image: Image.Image, background: tuple[int, int, int] = _WHITE) -> Image.Image:
    """Any Pillow mode -> RGB, with transparency composited onto `background` and deep pixels scaled to 8 bits
    (the one RGB conversion: the loader's, and the model pipeline's for images handed over in memory)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """16-bit, 32-bit integer or float grey levels -> uint8, scaled rather than clipped.

    Integer data is taken as 16-bit (what 16-bit PNG, TIFF and PGM hold), unless values exceed 65535, when it
    is scaled by its maximum. Float data in [0, 1] is scaled by 255, other float data by its range. Works on
    blocks of rows, so a 100-megapixel image needs no wide temporary copies.
    """
    out = np.empty(pixels.shape, np.uint8)
    if not pixels.size:
        return out
    step = max(1, (1 << 22) // max(1, int(np.prod(pixels.shape[1:]))))
    blocks = [slice(i, i + step) for i in range(0, pixels.shape[0], step)]
    if pixels.dtype.kind == "f":
        def finite(s: slice) -> np.ndarray:
            return np.nan_to_num(pixels[s].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)

        low, high = min(float(finite(s).min()) for s in blocks), max(float(finite(s).max()) for s in blocks)
        for s in blocks:
            values = finite(s)
            if low >= 0.0 and high <= 1.0:
                scaled = values * 255.0
            else:
                scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
            out[s] = np.clip(np.rint(scaled), 0, 255)
        return out
    top = max(int(pixels[s].max()) for s in blocks)
    for s in blocks:
        values = np.clip(pixels[s].astype(np.int64), 0, None)
        if top <= 65535:
            out[s] = (values + 128) // 257  # round(v * 255 / 65535)
        else:
            out[s] = np.rint(values * (255.0 / top))
    return out


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """CMYK -> RGB through the embedded ICC profile when there is one (printers' colours), else by formula."""
    profile = image.info.get("icc_profile")
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            converted = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
            if converted is not None:
                return converted
        except Exception:  # a damaged or unsupported profile: the formula below is still a fair rendering
            pass
    return image.convert("RGB")


# ----- files and messages -----

@contextlib.contextmanager
def _open_regular(path: str | os.PathLike, name: str) -> Iterator[IO[bytes]]:
    """Open a non-empty regular file (never blocking on a FIFO; see mammut_search.files)."""
    with open_regular(path) as (f, size):
        if size == 0:
            raise _error(name, "empty file (0 bytes)")
        yield f


def _display(path: str | os.PathLike | bytes) -> str:
    return os.fsdecode(os.fspath(path))


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _too_many_pixels(name: str, size: tuple[int, int] | None, limit: int) -> ImageLoadError:
    count = f"{size[0]}×{size[1]} = {size[0] * size[1]:,} pixels is" if size else "the image has"
    return _error(name, f"{count} more than the limit of {limit:,} pixels "
                        "(a decompression bomb? raise max_pixels if the image is genuine)")


def _error(name: str, reason: str) -> ImageLoadError:
    """ImageLoadError("name: reason"), with `path` and `reason` attributes for callers that show them apart."""
    error = ImageLoadError(f"{name}: {reason}")
    error.path, error.reason = name, reason
    return error
