"""Run folders on disk, torch-free: their layout, written and read back (``layout``), the lock one
process holds on a folder (``lock``), and the listing of what a runs folder holds (``catalog``, for
`ls` and `compare`). The runner writes them; the report, `ls` and `compare` read them."""
