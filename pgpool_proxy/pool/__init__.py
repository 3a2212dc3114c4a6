"""Backend connections and pools."""
