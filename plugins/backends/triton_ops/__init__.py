"""Triton kernels of the ``triton`` scan backend (imported only when it runs: they need
``triton``; ``pip install 'nlframe[triton]'``)."""
