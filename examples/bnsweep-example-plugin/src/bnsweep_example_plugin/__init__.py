"""An example bnsweep plugin (docs/extending.md): `shapenet`, `shapes` and `ghost_bn`.

Nothing is registered at import of this package: each entry point in pyproject.toml names the
object it stands for, and bnsweep imports that module when a spec uses the name.
"""
