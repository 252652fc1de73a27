"""Lambda handlers: thin borders around the cubeless library (one per function)."""
