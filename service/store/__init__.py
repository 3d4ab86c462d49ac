"""The results store: trials keyed by (spec_hash, seed), their epochs, and the sweeps using them.

`Store.open(url)` (`service.store.api`) is the way in; see docs/store.md. This package file
imports nothing, so that `import service.store` stays cheap for the command line: callers import
each name from the module that defines it.
"""
