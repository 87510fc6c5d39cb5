"""svd_fast.kernels: the ops behind svd_fast.layers, one backend at a time."""
