"""The torch modules (imported only when a model is built, never at plugin load)."""
