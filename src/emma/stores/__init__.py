"""Physical stores, their stock, and the events they host (store openings and events start tactics)."""
