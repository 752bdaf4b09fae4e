"""Rendering one corpus image: an SVG, a PNG or a font glyph, composited on white, fitted into a square."""

from __future__ import annotations

import io
import signal
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

RENDER_TIMEOUT_S = 30  # some clip art takes cairo minutes; such a file is skipped, not waited for


@dataclass(frozen=True)
class RenderJob:
    """What to draw and where to write it. `kind` is "svg" (markup), "svgfile", "clipart", "png" or "font"."""

    kind: str
    source: str  # SVG markup, a file path, or the font path for "font"
    out_path: str  # absolute PNG path
    char: str = ""  # the emoji, for "font"


def fit_on_white(image: Image.Image, size: int) -> Image.Image:
    """Composite on white and fit into a size×size square, keeping the aspect ratio, centred."""
    image = image.convert("RGBA")
    if image.width != size or image.height != size:
        scale = size / max(image.width, image.height)
        new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(new, Image.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(image, ((size - image.width) // 2, (size - image.height) // 2))
    return canvas.convert("RGB")


def render_svg(svg: str | None, size: int, path: str | None = None) -> Image.Image:
    """Render SVG markup (or a file) with resvg at `size` px on its longer side."""
    import resvg_py

    kwargs = {"svg_string": svg} if svg is not None else {"svg_path": path}
    png = resvg_py.svg_to_bytes(**kwargs, width=size, skip_system_fonts=True)
    image = Image.open(io.BytesIO(png))
    if image.height > size:
        png = resvg_py.svg_to_bytes(**kwargs, height=size, skip_system_fonts=True)
        image = Image.open(io.BytesIO(png))
    return image


def render_clipart(path: str, size: int) -> Image.Image:
    """Render an OpenClipart SVG with cairosvg (handles its older, looser SVG better than resvg)."""
    import cairosvg

    png = cairosvg.svg2png(url=path, output_width=size * 2, unsafe=False)
    return Image.open(io.BytesIO(png))


_FONTS: dict[str, tuple[ImageFont.FreeTypeFont, bytes]] = {}


def render_glyph(font_path: str, char: str) -> Image.Image:
    """Draw one emoji with the colour font; raise ValueError when the font has no single glyph for it."""
    if font_path not in _FONTS:
        font = ImageFont.truetype(font_path, 109)  # the one bitmap size Noto Color Emoji has
        _FONTS[font_path] = (font, _draw(font, "\U0010fffd").tobytes())  # what a missing glyph looks like
    font, missing = _FONTS[font_path]
    image = _draw(font, char)
    box = image.getbbox()
    if box is None or image.tobytes() == missing:
        raise ValueError("no glyph in the font")
    image = image.crop(box)
    if image.width > 1.3 * image.height:  # a sequence the font draws as several glyphs side by side
        raise ValueError("no single glyph in the font")
    return image


def _draw(font: ImageFont.FreeTypeFont, text: str) -> Image.Image:
    canvas = Image.new("RGBA", (400, 160), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((10, 10), text, font=font, embedded_color=True)
    return canvas


def _timeout(signum, frame):
    raise TimeoutError(f"took more than {RENDER_TIMEOUT_S} s")


def render_job(job: RenderJob, size: int) -> tuple[str, str]:
    """Render and write one job; returns (out_path, "" or the reason it failed). Never raises."""
    try:
        if Path(job.out_path).exists():
            return job.out_path, ""
        old = signal.signal(signal.SIGALRM, _timeout)
        signal.alarm(RENDER_TIMEOUT_S)
        try:
            if job.kind == "svg":
                image = render_svg(job.source, size)
            elif job.kind == "svgfile":
                image = render_svg(None, size, path=job.source)
            elif job.kind == "clipart":
                image = render_clipart(job.source, size)
            elif job.kind == "png":
                image = Image.open(job.source)
                image.load()
            elif job.kind == "font":
                image = render_glyph(job.source, job.char)
            else:
                raise ValueError(f"unknown kind {job.kind!r}")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        out = Path(job.out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.png")
        fit_on_white(image, size).save(tmp, optimize=True)
        tmp.replace(out)  # a half-written image never looks finished
        return job.out_path, ""
    except Exception as e:  # a broken source file is reported and skipped; the build goes on
        return job.out_path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
