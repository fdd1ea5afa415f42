"""Use cases: the rules of each link of the chain, over the ports. Idempotent by construction."""
