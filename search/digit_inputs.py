"""Digits from image files into the model's input: bounded reading and MNIST's own framing.

An image is judged by its header before it is decoded (a few KB of PNG can claim gigabytes of
pixels), then turned white-on-black, its background level taken off, and framed as MNIST was made:
the digit's bounding box scaled into 20x20 and centred by its centre of mass in 28x28. search/predict.py runs the model.
Its files (images, the model, a CSV) are checked before they are read, and a path is shown
escaped and shortened (`shown`) in every line predict prints.
"""

from __future__ import annotations

import errno
import io
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lightning_modules.data.format import IMAGE_SIDE, N_PIXELS
from lightning_modules.errors import UserInputError, check_path_length, one_line
from search.image_bounds import decode_cost_problem

MAX_IMAGE_BYTES = 64 * 1024 * 1024  # a phone photo is a few MB; anything this big is not a digit
# A phone photo is about 4032x3024; a transparent 4096x4096 PNG peaks near 400 MB on its way to 28x28.
# The header's size is checked before anything is decoded: a few KB of PNG can claim 13000x13000 pixels (GBs once decoded).
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE
DIGIT_BOX = 20  # MNIST fits each digit into 20x20 before centring it in 28x28
INK_THRESHOLD = 0.2  # share of the brightest pixel that counts as part of the digit
LIGHT_BACKGROUND = 127.5  # a border brighter than this means dark ink on light paper
NOISE_PER_MAD = 1.4826  # a normal spread's standard deviation per median absolute deviation
# The formats Pillow may open: each reads only its header on open. Others decode on open, before
# the size check (an ICO's embedded PNG: a 368 KB icon of 9459x9459 took 2 s and 431 MB).
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "AVIF", "PPM")  # JPEG covers MPO, PPM covers PBM/PGM
FORMAT_NAMES = "PNG, JPEG, GIF, BMP, TIFF, WebP, AVIF or PBM/PGM/PPM"
MAX_SHOWN = 120  # characters of a path or name an error quotes: its start and its end, where the file name is


class PredictError(UserInputError):
    """An input the predictor cannot use; the message says which and why."""


def real_bytes(text: str) -> str:
    """`text` with a file name's bytes that are not UTF-8 as \\xff (held as lone surrogates, they printed as \\udcff)."""
    try:
        return os.fsencode(text).decode(sys.getfilesystemencoding(), "backslashreplace")
    except UnicodeError:  # a surrogate no file name gives (a model's text): left for one_line to escape
        return text


def shown(text: object, limit: int = MAX_SHOWN) -> str:
    """`text` (a path, a name from a model file) as one bounded line: control characters escaped,
    so a file named "seven.png: 7 (99.9%)\nx.png" cannot print a result line of its own, a name's
    bytes as they are, and cut in the middle to `limit` characters, keeping the end (the file name, an error's fix)."""
    line = one_line(real_bytes(str(text)))
    if len(line) <= limit:
        return line
    head = (limit - 3) // 2
    return f"{line[:head]}...{line[len(line) - (limit - 3 - head) :]}"


def cannot_read(path: Path, error: OSError) -> PredictError:
    """One line for a file or folder that exists but cannot be read: not "corrupt", not a traceback."""
    reason = (error.strerror or type(error).__name__).lower()
    denied = error.errno in (errno.EACCES, errno.EPERM)
    fix = "give this user read access to it, or pass a copy it can read" if denied else "check the path"
    return PredictError(f"{shown(path)}: cannot be read ({reason}); {fix}")


def check_path(path: Path, what: str) -> None:
    """A path too long to name a file here is refused before it is used (its error quoted all of it)."""
    try:
        check_path_length(path, what)
    except UserInputError as error:
        raise PredictError(str(error)) from None


# ---------------------------------------------------------------- images


def _flatten_alpha(image: Any) -> Any:
    """Transparent images: put the strokes on the background that contrasts with them."""
    from PIL import Image

    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.uint8)  # uint8, not float: 8x less memory at 4096x4096
    if alpha.min() == 255:
        return rgba.convert("L")
    gray = np.asarray(rgba.convert("L"), dtype=np.uint8)
    visible = alpha > 0
    strokes_light = visible.any() and gray[visible].mean(dtype=np.float64) > LIGHT_BACKGROUND
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255) if strokes_light else (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("L")


def _regular_file(path: Path, limit: int, what: str, fix: str = "") -> None:
    """`path` must be a regular file of at most `limit` bytes (the data's check), the path shown bounded."""
    from lightning_modules.data.files import regular_file_size

    regular_file_size(path, limit, what, fix, error=PredictError, show=shown, unreadable=cannot_read)


def file_in(path: Path, name: str, fix: str) -> Path:
    """The folder `path`'s file `name`, or `path` itself when it is no folder; a folder this user
    may not enter (Path.exists raised PermissionError) or a loop of symbolic links (which it calls missing) is one line."""
    try:
        file = path / name if path.is_dir() else path
        if file.exists():
            return file
        file.stat()  # raises: a loop (ELOOP, which only this stat lets through) is named, a missing file said below
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as error:
        raise cannot_read(file if error.errno == errno.ELOOP else path, error) from None
    raise PredictError(f"{f'no {name} in {shown(path)}' if file != path else f'{shown(path)} does not exist'}; {fix}")


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them: read once, so what is checked is what is used."""
    _regular_file(path, limit, what)
    try:
        with path.open("rb") as handle:
            return handle.read(limit)
    except OSError as error:
        raise cannot_read(path, error) from None


_SHRINK = f"scale it down to at most {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels (a digit needs only 28x28)"


def _check_image_size(path: Path, width: int, height: int) -> None:
    """Refuse an image whose header claims a side longer than MAX_IMAGE_SIDE, before decoding it
    (28x599000 passed a check of the pixel count alone, though the limit is named per side)."""
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
        raise PredictError(f"{shown(path)}: the image is {width}x{height} pixels, more than {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}; {_SHRINK}")


def _bomb_size(error: Exception) -> str:
    """The pixel count in Pillow's decompression-bomb message ("Image size (N pixels) exceeds ...")."""
    import re

    from PIL import Image

    found = re.search(r"\((\d+) pixels\)", str(error))
    return f"the image is {int(found[1]):,} pixels" if found else f"the image is more than {Image.MAX_IMAGE_PIXELS:,} pixels"


DEEP_MODES = ("F", "I", "I;16", "I;16L", "I;16B", "I;16N")  # float, 32-bit and 16-bit grayscale
FLOAT_UNIT_MAX = 2.0  # a float image brighter than this is on the 0-255 scale, else on 0-1 (overshoot allowed)


def _white(path: Path, mode: str, brightest: float) -> float:
    """The value that means white: 1.0 or 255 for a float image, 65535 for 16 bits; a 32-bit
    integer image (a 16-bit PNG opens so in older Pillow) by the range its values fit."""
    if mode == "F":
        return 1.0 if brightest <= FLOAT_UNIT_MAX else 255.0
    if mode.startswith("I;16") or 255 < brightest <= 65535:
        return 65535.0
    if brightest <= 255:
        return 255.0
    raise PredictError(f"{shown(path)}: pixel values up to {brightest:.0f}, beyond 16 bits; save the digit as an 8- or 16-bit grayscale image")


def _deep_to_gray(path: Path, image: Any) -> np.ndarray:
    """A float (0-1 or 0-255), 16-bit or 32-bit grayscale image scaled to 0-255. Pillow's
    convert("L") clips instead, so a float image of 0-1 became all but black, and was still predicted."""
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise PredictError(f"{shown(path)}: the image holds NaN or infinite pixel values")
    white = _white(path, image.mode, float(values.max(initial=0.0)))
    return np.clip(np.rint(values / white * 255.0), 0, 255).astype(np.uint8)


def first_line(error: BaseException) -> str:
    """An error's message as one short reason: its first line, or its type where it has none
    (Pillow's plugins and ONNX Runtime raise some errors bare, or with pages of detail)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


ORIENTATION = 0x0112  # the EXIF tag; each value's turn as ImageOps.exif_transpose makes it, without its rewrite of the
# EXIF block, which decoded every number in it (an 8 MB PNG whose eXIf listed 4M: 3 s and 800 MB)
_TURNS = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}


def _decode(path: Path, handle: Any) -> np.ndarray:
    """Decode the open file `handle` (its size judged from the header) and make it 8-bit grayscale."""
    from PIL import Image

    with Image.open(handle, formats=IMAGE_FORMATS) as opened:  # reads the header only
        _check_image_size(path, *opened.size)
        opened.load()
        turn = _TURNS.get(opened.getexif().get(ORIENTATION, 1))  # a phone photo is stored on its side
        image = opened.transpose(Image.Transpose[turn]) if turn else opened
        has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
        gray = _flatten_alpha(image) if has_alpha else _deep_to_gray(path, image) if image.mode in DEEP_MODES else image.convert("L")
        return np.asarray(gray, dtype=np.uint8)


def read_image(path: Path) -> np.ndarray:
    """A grayscale uint8 array of an image in one of IMAGE_FORMATS; PredictError if it cannot be read.
    Pillow's warnings (a TIFF tag with too many entries, ...) are recorded, not printed: the user
    gets the prediction, or one line. Its decompression-bomb warning becomes that line."""
    from PIL import Image, UnidentifiedImageError

    check_path(path, "the image path")
    data = read_bounded(path, MAX_IMAGE_BYTES, "an image file")  # read here: Pillow's plugins would call a refused read "corrupt"
    if problem := decode_cost_problem(data):  # scans, TIFF tags: bounded before Pillow reads one, in the bytes it then decodes
        raise PredictError(f"{shown(path)}: {problem}; save the digit as PNG")
    try:
        with io.BytesIO(data) as handle, warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # raised by Image.open itself
            return _decode(path, handle)
    except PredictError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise PredictError(f"{shown(path)}: {_bomb_size(error)}, more than {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}; {_SHRINK}") from None
    except UnidentifiedImageError:
        raise PredictError(f"{shown(path)}: not a {FORMAT_NAMES} image, or its header is corrupt; save the digit as PNG") from None
    except Exception as error:  # noqa: BLE001 - a corrupt file makes Pillow's plugins raise almost anything:
        # OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, bare Exception
        raise PredictError(f"{shown(path)}: corrupt or truncated image ({shown(first_line(error))})") from None


def _border(image: np.ndarray) -> np.ndarray:
    """The pixels of the image's edge, 1/14 of its shorter side wide (2 of 28): where a digit rarely reaches."""
    width = max(1, min(image.shape) // 14)
    return np.concatenate([image[:width].ravel(), image[-width:].ravel(), image[:, :width].ravel(), image[:, -width:].ravel()])


def is_light_background(image: np.ndarray) -> bool:
    """Dark ink on light paper: judged by the image's border."""
    return float(_border(image).mean()) > LIGHT_BACKGROUND


def to_white_on_black(image: np.ndarray) -> np.ndarray:
    return 255 - image if is_light_background(image) else image


def without_background(image: np.ndarray) -> np.ndarray:
    """A white-on-black image with its background taken off (its border's median, and three times
    the border's spread above it, for paper grain or sensor noise) and its ink stretched back to 255.
    On light-grey paper the inverted background was ~55 and the ink cut-off ~47: the whole image
    counted as ink, and 200x200 MNIST digits on a background of 200 scored 32%, not 91%. A black
    background (MNIST's own) is left as it is, bit for bit."""
    border = _border(image).astype(np.float64)
    median = float(np.median(border))
    level = median + 3 * NOISE_PER_MAD * float(np.median(np.abs(border - median)))
    if level <= 0 or level >= 0.5 * float(image.max()):  # a digit cropped to its outline: the border is ink, not paper
        return image
    ink = image.astype(np.float32) - np.float32(level)  # float32: a 4096x4096 page is 64 MB, not 128
    top = float(ink.max())
    if top <= 0:  # no pixel above the background: a blank page
        return np.zeros_like(image)
    return np.clip(np.rint(ink * (255.0 / top)), 0, 255).astype(np.uint8)


def frame_digit(image: np.ndarray) -> np.ndarray:
    """A white-on-black image larger than 28x28 -> MNIST framing: digit fitted to 20x20, centred by mass."""
    from PIL import Image

    ink = image >= max(1.0, INK_THRESHOLD * float(image.max()))
    if not ink.any():  # blank: nothing to frame, just shrink it
        return np.asarray(Image.fromarray(image).resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BOX), dtype=np.uint8)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = DIGIT_BOX / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    digit = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
    mass = digit.sum()
    cy, cx = ((np.indices(digit.shape) * digit).sum(axis=(1, 2)) / mass) if mass > 0 else (digit.shape[0] / 2, digit.shape[1] / 2)
    top = int(np.clip(round(IMAGE_SIDE / 2 - cy), 0, IMAGE_SIDE - digit.shape[0]))
    left = int(np.clip(round(IMAGE_SIDE / 2 - cx), 0, IMAGE_SIDE - digit.shape[1]))
    canvas = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float64)
    canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def to_model_input(image: np.ndarray, source: str) -> np.ndarray:
    """uint8 grayscale (28x28 or larger) -> 784 float32 pixels in [0, 1], white digit on black."""
    if image.ndim != 2:
        raise PredictError(f"{shown(source)}: expected a 2-D grayscale image, got an array of shape {image.shape}")
    height, width = image.shape
    if height < IMAGE_SIDE or width < IMAGE_SIDE:
        raise PredictError(f"{shown(source)}: the image is {width}x{height} pixels; it must be at least 28x28")
    image = without_background(to_white_on_black(image))
    if image.shape != (IMAGE_SIDE, IMAGE_SIDE):
        image = frame_digit(image)
    return image.reshape(N_PIXELS).astype(np.float32) / 255.0
