"""The renderers of the table model, one module per format; `formats` holds their registry."""
