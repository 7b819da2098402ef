"""What every layer agrees on, stated once and torch-free: the table of LAMB rules (variants.py),
what "diverged" means (divergence.py), the claims' measures (measures.py), the words of a status or
a verdict (statuses.py) and the names of a run folder's files (files.py). It imports nothing of
lambexp's but itself."""
