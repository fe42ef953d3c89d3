"""approx (see DESIGN.md)."""
