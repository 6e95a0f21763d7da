"""Model components (light: torch is imported inside their methods)."""
