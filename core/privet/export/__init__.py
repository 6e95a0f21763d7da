"""Exporting trained models to inference artifacts and bundles."""
