"""What an image file's bytes make Pillow do, judged from the bytes before Pillow opens them.

search/digit_inputs.py checks an image's sides from its header before decoding it, yet a file of
sides under the bound can still cost far more than its pixels: a 3.3 MB progressive JPEG of
100,000 scans took 260 s to decode (each scan passes over the whole image again), and a 64 MB
TIFF of 28x28 pixels listing 8M strips took 75 s and 2.2 GB (Pillow reads every value of its
first directory's strip tags on open, and makes a tile of each strip). Each check here counts in
bytes already read and size-bounded, and says what is wrong in a phrase; None where nothing is.
"""

from __future__ import annotations

import re
import struct

# libjpeg-turbo's TurboJPEG refuses more than 500 scans when told to limit them (TJFLAG_LIMITSCANS,
# tjbench -limitscans), its guard against this very file; libjpeg writes a progressive JPEG in 6
# (grayscale) or 10 (colour) scans, and optimisers such as mozjpeg stay within a few dozen. At
# 4096x4096, 500 scans decoded in under 1 s here, against 260 s for 100,000.
MAX_JPEG_SCANS = 500
# Searched in C, not byte by byte: 64 MB of stuffed bytes (FF 00) took a Python loop 32M steps.
_MARKER = re.compile(rb"\xff[^\xff]")  # a marker, after any fill bytes
_SCAN_END = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")  # a scan's data ends at a marker: no stuffed byte, restart or fill
# An image of at most 4096x4096 needs at most one strip per row and sample (4 samples: 16,384
# strips, 32,768 values with their byte counts), or 65,536 tiles of TIFF's smallest (16x16): 131,072
# values. The bound leaves twice that: 262,144 strip offsets and counts open in about 1.5 s and 30 MB.
MAX_TIFF_VALUES = 1 << 18
MAX_TIFF_ENTRIES = 4096  # tags in the first directory: an image has a few dozen; Pillow reads each one twice
# Bytes per value of the TIFF types Pillow reads as numbers (a tuple of Python objects); BYTE (1),
# ASCII (2) and UNDEFINED (7) it keeps as one bytes object, and a type it does not know it skips.
_NUMBER_SIZES = {3: 2, 4: 4, 5: 8, 6: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8}


def decode_cost_problem(data: bytes) -> str | None:
    """Why decoding the image `data` would cost more than any image of the sides allowed, or None."""
    if data.startswith(b"\xff\xd8"):
        return _jpeg_problem(data)
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II\x00*", b"MM*\x00", b"II+\x00", b"MM\x00+"):  # Pillow's TIFF prefixes
        return _tiff_problem(data)
    return None


def _jpeg_problem(data: bytes) -> str | None:
    """Too many scans, as a decoder meets them (`jpeg_scans`)."""
    if jpeg_scans(data, MAX_JPEG_SCANS + 1) > MAX_JPEG_SCANS:
        return f"a JPEG of more than {MAX_JPEG_SCANS} scans, more than a JPEG decoder should read (a progressive JPEG has about 10)"
    return None


def jpeg_scans(data: bytes, most: int | None = None) -> int:
    """The scans a decoder reads in the JPEG `data`: each segment skipped by its length, each start
    of scan's entropy-coded data run to the next marker that is neither a stuffed byte (FF 00), a
    restart (FF D0-D7) nor a fill byte, up to the end of image. FF DA counted anywhere in the file
    made a photo with 40 MB appended after its end (a phone's motion-photo video) 621 scans: random
    bytes hold one every 64 KB, after the image or inside an EXIF or comment segment. Counted up to
    `most` (64 MB of 4-byte scans are 16M: seconds to count them all)."""
    at, scans = 2, 0
    while at + 4 <= len(data) and (most is None or scans < most):
        if data[at] != 0xFF or data[at + 1] == 0xFF:  # bytes between segments, or fill bytes: on to the next marker
            found = _MARKER.search(data, at)
            if found is None:
                break
            at = found.start()
            continue
        marker = data[at + 1]
        if marker == 0xD9:  # end of image
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if marker == 0xDA:
            scans += 1
            found = _SCAN_END.search(data, at)
            at = found.start() if found else len(data)
    return scans


def _tiff_problem(data: bytes) -> str | None:
    """Too many tags in the first directory (the one Pillow opens), or too many numeric values in
    them. Only values the file holds count: Pillow skips a tag whose data lies past the end. A header
    too short or pointing outside the file is left to Pillow, which calls it corrupt."""
    endian = "<" if data[:2] == b"II" else ">"
    big = data[2] == 0x2B  # BigTIFF: 8-byte counts and offsets, 20-byte entries
    word, entry_size, inline = ("Q", 20, 8) if big else ("L", 12, 4)
    try:
        (first,) = struct.unpack_from(endian + word, data, 8 if big else 4)
        (entries,) = struct.unpack_from(endian + ("Q" if big else "H"), data, first)
    except struct.error:
        return None
    if entries > MAX_TIFF_ENTRIES:
        return f"a TIFF whose first directory has {entries:,} tags, more than {MAX_TIFF_ENTRIES:,}"
    values, start = 0, first + (8 if big else 2)
    for at in range(start, min(start + entries * entry_size, len(data) - entry_size + 1), entry_size):
        _tag, kind, count, where = struct.unpack_from(endian + "HH" + word + word, data, at)
        size = count * _NUMBER_SIZES.get(kind, 0)  # 0: kept as bytes, or skipped
        if 0 < size and (size <= inline or where + size <= len(data)):
            values += count
    if values > MAX_TIFF_VALUES:
        return f"a TIFF whose first directory lists {values:,} numbers (strip offsets and the like), more than {MAX_TIFF_VALUES:,}"
    return None
