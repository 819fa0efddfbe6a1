"""Test-only helpers (importable as ``_support``: pytest puts tests/ on sys.path).

* :mod:`_support.graphgen`: random CNN architectures for the property tests;
* :mod:`_support.oracles`: the lossless dead-channel oracle.

The small helpers users may want in their own tests (make_model, vinfo, run,
random_feeds, write_large_cnn) stay public in :mod:`onnxprune.testing`.
"""
