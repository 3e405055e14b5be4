"""The ``ichrt`` subcommands, one module each, imported lazily by :mod:`ichrt.runtime.cli`."""
