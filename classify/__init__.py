"""classify (see DESIGN.md)."""
