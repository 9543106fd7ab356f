"""The MNIST format: 28x28 uint8 images, labels 0-9, the IDX magic numbers and the CSV layout.

Torch-free constants shared by the readers, the model, the figures and predict; the one place
each is named.
"""

from __future__ import annotations

IMAGE_SIDE = 28
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE
N_CLASSES = 10
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
CSV_COLUMNS = 1 + N_PIXELS  # the label, then the pixels
GZIP_MAGIC = b"\x1f\x8b"

# Bounds checked before the work they would cost: a data file larger than this is refused
# before it is decompressed or parsed. MNIST's training images are 60,000 rows (47 MB raw);
# the cap leaves room for data sets ten times its size.
MAX_ROWS = 700_000
MAX_IDX_BYTES = 16 + MAX_ROWS * N_PIXELS
MAX_CSV_BYTES = 4 * CSV_COLUMNS * MAX_ROWS  # "255," per cell at most, plus line ends
# One CSV line, refused past this before it is kept: a row of whole numbers takes 4 bytes a cell
# ("255,"), a header of names ("label,pixel0,...") ~9, quoted ones ~11, numpy's savetxt default
# ("2.550000000000000000e+02,") 25: 32 a cell leaves room for signs and spaces.
CSV_CELL_BYTES = 32
MAX_CSV_LINE_BYTES = CSV_CELL_BYTES * CSV_COLUMNS
