"""The results store: trials keyed by (spec_hash, seed), their epochs, and the sweeps using them.

`Store.open(url)` (`bnsweep.store.api`) is the way in; see docs/store.md. This package file
imports nothing, so that `import bnsweep.store` stays cheap for the command line: callers import
each name from the module that defines it.
"""
