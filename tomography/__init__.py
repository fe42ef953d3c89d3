"""tomography (see DESIGN.md)."""
