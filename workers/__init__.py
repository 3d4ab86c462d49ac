"""`bnsweep.workers`: one trial in plain PyTorch (BN variants, models, data, training loop,
checkpoints), callable from a notebook without Ray or a database."""
