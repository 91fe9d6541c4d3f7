"""`python -m alma_jax ...` is `python -m alma_jax.train ...`."""

from alma_jax.train import main

main()
