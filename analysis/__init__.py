"""`bnsweep.analysis`: pairing by seed, paired tests, the significance tables and their
renderers, plots; it works on DataFrames and never opens the store."""
