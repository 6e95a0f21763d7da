"""TensorBoard, progress display, manifest and run report."""
