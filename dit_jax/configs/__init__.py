"""Training configs: `dit.py` (the paper's recipe for the 12 models) and `demo.py` (the laptop demo).

The top-level `configs/` folder of a checkout is this package: `--config configs/dit.py:XL/2` names
the same file in a checkout and in any installed copy.
"""
