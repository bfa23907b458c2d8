"""The fast path: optimisations of the plain path, each in its own module, each proven equal to it by a test.

    packing.py    the forwards of embedding many texts: sorted by length or packed several to a row; bounded shapes
                  (tests/test_fast_packing.py)
    embedding.py  the fast embed(): planned forwards, asynchronous dispatch, streaming  (tests/test_fast_path.py)
    xla.py        the CPU matmul library and the persistent compilation cache  (tests/test_xla.py)

The book (the minilm/ top level) never imports from here (tests/test_layout.py); docs/fast-path.md explains each
optimisation.
"""
