"""Image decoding shared by every path (student view, teacher view, eval): one function, one behaviour.

`open_image` applies the EXIF orientation *before* anything reads box coordinates, converts every
mode (L, LA, P, RGBA, CMYK, I;16, ...) to RGB (alpha composited on white), and refuses images over a
pixel limit (decompression bombs) with an error that names the file.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps

DEFAULT_MAX_IMAGE_PIXELS = 200_000_000  # 200 MP: larger than any benchmark image (HR-Bench 8K is ~60 MP)


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and what is wrong."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB. Alpha is composited on white; 16-bit greyscale is rescaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / hi if hi > 255 else 1.0
        return Image.fromarray((arr * scale).clip(0, 255).astype("uint8"), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def image_size(path: str | Path, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) after the EXIF orientation, read from the file's header without decoding the pixels (a quick
    check of many large images; `open_image` still decodes, and so catches truncated files)."""
    name = str(path)
    if not Path(path).is_file():
        raise ImageError(f"{name}: image file not found")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
                w, h = h, w
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: refused as a decompression bomb ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from e
    if w * h > max_pixels:
        raise ImageError(f"{name}: image has {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
                         "(raise views.max_image_pixels if it is genuine)")
    return w, h


def open_image(source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image file (or encoded bytes) fully, EXIF-transposed, as RGB.

    Raises ImageError naming the source for a missing, unreadable, truncated or non-image file and for
    an image over `max_pixels`.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise ImageError(f"{name}: image file not found")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(
                    f"{name}: image has {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
                    "(raise views.max_image_pixels if it is genuine)"
                )
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: refused as a decompression bomb ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from e
