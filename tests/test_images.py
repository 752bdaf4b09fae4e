"""The safe image loader: one generated file per hazard, each either decoded right or refused by name."""

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mammut_search.errors import ImageLoadError
from mammut_search.model.config import ImageEncoderConfig
from mammut_search.inference import decode_side, power_of_two_reduction, preprocess_images, square_pixels
from mammut_search.images import IMAGE_EXTENSIONS, image_size, load_image, load_image_with_size, open_image_bytes

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def pixel(image, x, y):
    return image.getpixel((x, y))


def close(a, b, tolerance=8):
    return all(abs(int(p) - int(q)) <= tolerance for p, q in zip(a, b))


def refused(path, *words, **kwargs) -> ImageLoadError:
    """Assert load_image refuses `path` with a message "path: reason" that contains `words`."""
    with pytest.raises(ImageLoadError) as caught:
        load_image(path, **kwargs)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    for word in words:
        assert word in message, message
    return caught.value


def left_red_right_blue(width=40, height=20) -> Image.Image:
    image = Image.new("RGB", (width, height), RED)
    image.paste(BLUE, (width // 2, 0, width, height))
    return image


# ----- decoded right -----

@pytest.mark.parametrize("suffix", ["png", "jpg", "webp", "bmp", "gif", "tif"])
def test_every_supported_format_decodes_to_rgb(tmp_path, suffix):
    path = tmp_path / f"picture.{suffix}"
    left_red_right_blue().save(path)

    image = load_image(path)

    assert image.mode == "RGB" and image.size == (40, 20)
    assert close(pixel(image, 2, 10), RED, 40) and close(pixel(image, 37, 10), BLUE, 40)


def test_exif_orientation_is_applied_and_image_size_agrees(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the viewer turns it 90° clockwise
    left_red_right_blue().save(path, exif=exif, quality=95)

    image = load_image(path)

    assert image.size == (20, 40)
    assert close(pixel(image, 10, 2), RED, 40) and close(pixel(image, 10, 37), BLUE, 40)
    assert image_size(path) == (20, 40)


def test_palette_transparency_is_composited_onto_white(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (5, 0, 10, 10))
    image.save(path, transparency=0)  # palette entry 0 (black) is transparent

    loaded = load_image(path)

    assert pixel(loaded, 1, 1) == WHITE and pixel(loaded, 8, 1) == RED


def test_alpha_is_composited_onto_white(tmp_path):
    path = tmp_path / "alpha.png"
    image = Image.new("RGBA", (3, 1))
    image.putdata([(0, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 128)])
    image.save(path)

    loaded = load_image(path)

    assert pixel(loaded, 0, 0) == WHITE and pixel(loaded, 1, 0) == RED
    assert close(pixel(loaded, 2, 0), (127, 127, 127), 1)


def test_grey_with_alpha_is_composited_onto_white(tmp_path):
    path = tmp_path / "grey-alpha.png"
    image = Image.new("LA", (2, 1))
    image.putdata([(0, 0), (0, 255)])
    image.save(path)

    loaded = load_image(path)

    assert pixel(loaded, 0, 0) == WHITE and pixel(loaded, 1, 0) == (0, 0, 0)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    levels = np.array([[0, 256 * 64, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(levels).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file

    loaded = load_image(path)

    assert [pixel(loaded, x, 0)[0] for x in range(4)] == [0, 64, 128, 255]


def test_32_bit_integer_grey_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.tif"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32)).save(path)
    assert Image.open(path).mode == "I"

    loaded = load_image(path)

    assert [pixel(loaded, x, 0)[0] for x in range(3)] == [0, 128, 255]


def test_float_grey_in_unit_range_is_scaled(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(path)

    loaded = load_image(path)

    assert [pixel(loaded, x, 0)[0] for x in range(3)] == [0, 128, 255]


@pytest.mark.parametrize("suffix", ["tif", "jpg"])
def test_cmyk_converts_to_the_right_colours(tmp_path, suffix):
    path = tmp_path / f"print.{suffix}"
    image = Image.new("CMYK", (30, 10), (0, 0, 0, 0))  # white paper
    image.paste((255, 0, 0, 0), (10, 0, 20, 10))  # cyan ink
    image.paste((0, 0, 0, 255), (20, 0, 30, 10))  # black ink
    image.save(path)

    loaded = load_image(path)

    assert loaded.mode == "RGB"
    assert close(pixel(loaded, 5, 5), WHITE) and close(pixel(loaded, 15, 5), (0, 255, 255))
    assert close(pixel(loaded, 25, 5), (0, 0, 0))


def test_animation_gives_its_first_frame(tmp_path):
    path = tmp_path / "animated.gif"
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE, (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3

    assert pixel(load_image(path), 4, 4) == RED


def test_bytes_of_an_upload_decode_like_a_file(tmp_path):
    path = tmp_path / "upload.png"
    left_red_right_blue().save(path)

    image = open_image_bytes(path.read_bytes())

    assert image.mode == "RGB" and image.size == (40, 20) and pixel(image, 1, 1) == RED


def test_image_extensions_are_the_supported_formats():
    assert IMAGE_EXTENSIONS == {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"}


# ----- decoded at reduced scale for a model (min_side) -----

def smooth_photo(width=800, height=600) -> Image.Image:
    """A camera-like picture: smooth colours, left half reddish, right half bluish."""
    small = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    image.paste(Image.new("RGB", (width // 2, height // 4), RED), (0, 0))
    image.paste(Image.new("RGB", (width // 2, height // 4), BLUE), (width // 2, 0))
    return image


def test_jpeg_with_min_side_is_decoded_smaller_but_never_below_it(tmp_path):
    path = tmp_path / "photo.jpg"
    smooth_photo(800, 600).save(path, quality=90)

    image, full = load_image_with_size(path, min_side=96)

    assert full == (800, 600)
    assert image.mode == "RGB" and image.size == (200, 150)  # 1/4 scale: 1/8 would give 75 rows
    assert close(pixel(image, 10, 10), RED, 40) and close(pixel(image, 190, 10), BLUE, 40)
    assert load_image(path, min_side=96).size == (200, 150)
    assert open_image_bytes(path.read_bytes(), min_side=96).size == (200, 150)
    assert load_image(path, min_side=400).size == (800, 600)  # no smaller scale keeps 400 rows
    assert load_image(path).size == (800, 600)


def test_reduced_jpeg_keeps_its_exif_orientation_and_full_size(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the viewer turns it 90° clockwise
    smooth_photo(800, 600).save(path, exif=exif, quality=90)

    image, full = load_image_with_size(path, min_side=96)

    assert full == (600, 800) == image_size(path)
    assert image.size == (150, 200)
    assert close(pixel(image, 140, 10), RED, 40) and close(pixel(image, 140, 190), BLUE, 40)


def test_reduced_cmyk_jpeg_converts_to_the_right_colours(tmp_path):
    path = tmp_path / "print.jpg"
    image = Image.new("CMYK", (800, 200), (0, 0, 0, 0))
    image.paste((255, 0, 0, 0), (400, 0, 800, 200))  # cyan ink on the right
    image.save(path, quality=95)

    loaded, full = load_image_with_size(path, min_side=50)

    assert full == (800, 200) and loaded.size == (200, 50) and loaded.mode == "RGB"
    assert close(pixel(loaded, 20, 25), WHITE) and close(pixel(loaded, 180, 25), (0, 255, 255))


def test_images_other_than_jpeg_are_box_reduced_as_the_encoders_would(tmp_path):
    path = tmp_path / "big.png"
    smooth_photo(800, 600).save(path)
    image, full = load_image_with_size(path, min_side=96)
    assert full == (800, 600) and image == load_image(path).reduce(4)  # 1/8 would give 75 rows
    assert load_image(path, min_side=400) == load_image(path)


def test_a_reduced_16_bit_image_is_scaled_like_a_full_one(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray((np.arange(400 * 300).reshape(300, 400) % 65536).astype(np.uint16)).save(path)
    reduced = np.asarray(load_image(path, min_side=64), np.float32)
    full = np.asarray(load_image(path).reduce(4), np.float32)
    assert reduced.shape == full.shape == (75, 100, 3) and np.abs(reduced - full).max() <= 1


MEASURE_PEAK = """
import resource, sys
from mammut_search.images import load_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = load_image(sys.argv[1], min_side=320)
print(image.size, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def huge_16_bit_png(path: Path, side: int = 11000) -> Path:
    """A 1.8 MB PNG of a side x side 16-bit grey image (121 Mpx for 11000: under the pixel cap), written row by
    row without ever holding its pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(1)
    row = b"\x00" + bytes(range(256)) * (2 * side // 256) + bytes(2 * side % 256)  # filter byte, then pixels
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def test_a_small_file_of_a_huge_16_bit_image_decodes_in_under_a_gigabyte(tmp_path):
    """It once took 2.4 GB to decode."""
    import subprocess
    import sys

    path = huge_16_bit_png(tmp_path / "huge16.png")
    done = subprocess.run([sys.executable, "-c", MEASURE_PEAK, str(path)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert done.returncode == 0, done.stderr
    size, peak = done.stdout.split(")")
    assert size == "(344, 344" and int(peak) < 1 << 30, f"{int(peak) / 2**20:.0f} MiB"


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_hazards_are_still_refused_when_decoding_at_reduced_scale(tmp_path, suffix):
    cut = tmp_path / f"cut.{suffix}"
    smooth_photo().save(cut)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    refused(cut, "truncated or corrupt", min_side=96)

    bomb = tmp_path / f"bomb.{suffix}"
    bomb.write_bytes(jpeg_claiming(60000, 60000) if suffix == "jpg" else png_header_only(60000, 60000))
    refused(bomb, "more than the limit", min_side=96)


def test_preprocessing_gives_nearly_the_same_pixels_from_a_reduced_or_a_full_decode(tmp_path):
    config = ImageEncoderConfig(image_size=96)
    path = tmp_path / "photo.jpg"
    smooth_photo(1600, 1200).save(path, quality=90)

    full = square_pixels(load_image(path), config).astype(int)
    reduced = square_pixels(load_image(path, min_side=decode_side(config)), config).astype(int)

    assert full.shape == reduced.shape == (96, 96, 3)
    assert np.abs(full - reduced).mean() < 1.0 and np.abs(full - reduced).max() <= 8


def test_preprocessing_reduces_large_images_by_powers_of_two_down_to_the_input_size():
    assert decode_side(ImageEncoderConfig(image_size=96)) == 96
    assert [power_of_two_reduction(size, 96) for size in [(100, 100), (191, 1000), (192, 192), (1024, 768),
                                                            (4000, 3000), (5000, 700)]] == [1, 1, 2, 8, 16, 4]


def test_preprocessing_letterboxes_onto_the_background_and_normalises_by_batch():
    config = ImageEncoderConfig(image_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    wide = Image.new("RGB", (16, 8), RED)

    pixels = square_pixels(wide, config)
    batch = preprocess_images([wide, Image.new("RGBA", (8, 8), (0, 0, 0, 0))], config)

    assert pixels.dtype == np.uint8 and pixels.shape == (8, 8, 3)
    assert (pixels[0] == WHITE).all() and (pixels[4] == RED).all()  # rows 0-1 padding, 2-5 the image
    assert batch.shape == (2, 3, 8, 8) and batch.is_contiguous()
    assert batch[0, :, 4, 4].tolist() == [1.0, -1.0, -1.0] and (batch[1] == 1.0).all()  # transparent: white


# ----- refused by name -----

def jpeg_claiming(width: int, height: int) -> bytes:
    """A small valid JPEG whose frame header claims width × height pixels."""
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")  # baseline frame header: marker, length, precision, height, width
    data[frame + 5:frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk claiming width × height RGB pixels, then one tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(60000, 60000))  # 3.6 billion pixels claimed in a 100-byte file

    refused(path, "more than the limit", "decompression bomb")
    with pytest.raises(ImageLoadError, match="^bomb: .*more than the limit"):
        open_image_bytes(path.read_bytes(), name="bomb")
    with pytest.raises(ImageLoadError, match="more than the limit"):
        image_size(path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets the module's filter
def test_bomb_below_pillows_own_cap_is_refused_by_ours(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(12000, 12000))  # 144 million pixels: Pillow alone would only warn

    refused(path, "12000×12000 = 144,000,000 pixels", "more than the limit of 128,000,000")


def test_pixel_cap_is_configurable(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)

    refused(path, "100×100 = 10,000 pixels", max_pixels=9999)
    assert load_image(path, max_pixels=10000).size == (100, 100)


@pytest.mark.parametrize("suffix", ["jpg", "png", "webp", "gif"])
def test_truncated_file_is_refused(tmp_path, suffix):
    path = tmp_path / f"cut.{suffix}"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    refused(path)


def test_corrupt_pixel_data_is_refused(tmp_path):
    path = tmp_path / "corrupt.png"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # zeroes inside the compressed stream
    path.write_bytes(bytes(data))

    refused(path, "corrupt")


def test_zero_byte_file_is_refused(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()
    refused(path, "empty")
    with pytest.raises(ImageLoadError, match="^upload: empty"):
        open_image_bytes(b"")


def test_directory_named_like_an_image_is_refused(tmp_path):
    path = tmp_path / "folder.jpg"
    path.mkdir()
    refused(path, "directory")


def test_text_file_named_like_an_image_is_refused(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("shopping list: apples, pears\n")
    refused(path, "not an image")
    with pytest.raises(ImageLoadError, match="^paste: not an image"):
        open_image_bytes(path.read_bytes(), name="paste")


def test_formats_that_run_external_programs_are_refused(tmp_path):
    path = tmp_path / "poster.jpg"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")  # Pillow would call Ghostscript
    refused(path, "not an image")


def test_missing_file_is_refused(tmp_path):
    refused(tmp_path / "gone.png", "no such file")


def test_fifo_named_like_an_image_is_refused_without_blocking(tmp_path):
    path = tmp_path / "pipe.png"
    os.mkfifo(path)  # opening it for reading would wait forever for a writer
    refused(path, "not a regular file")
    with pytest.raises(ImageLoadError, match="not a regular file"):
        image_size(path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads files whatever their permissions")
def test_unreadable_file_is_refused(tmp_path):
    path = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(path)
    path.chmod(0)
    try:
        refused(path, "permission denied")
    finally:
        path.chmod(0o644)


def test_error_carries_path_and_reason_apart(tmp_path):
    path = tmp_path / "empty.png"
    path.touch()
    error = refused(path)
    assert error.path == str(path) and error.reason == "empty file (0 bytes)"
