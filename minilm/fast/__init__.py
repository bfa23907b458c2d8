"""The fast path: optimisations of the plain path, each proven equal to it by a test.

    embedding.py  the fast embed(): forwards planned with bounded shapes, packed several texts to a row or sorted by
                  length (tests/test_fast_packing.py); asynchronous dispatch; streaming (tests/test_fast_path.py)
    xla.py        the CPU matmul library and the persistent compilation cache  (tests/test_xla.py)

The book (the minilm/ top level) never imports from here (tests/test_layout.py); docs/fast-path.md explains each
optimisation.
"""
