"""What every stage shares: atomic files, seeds, run locks, safe loading, numerical checks, torchrun,
devices, errors, the config, reports, metrics, run folders and logs, model flags, command-line plumbing."""
