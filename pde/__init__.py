"""pde (see DESIGN.md)."""
