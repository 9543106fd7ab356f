"""MNIST-format data, one module per job: format, datasets, files, readers, csv_rows, sources,
download, arrays, split, batches, datamodule.

Nothing is imported here, so `import lightning_modules.data.sources` (torch-free) stays cheap.
"""
