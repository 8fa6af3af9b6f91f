"""ciliumlite."""
