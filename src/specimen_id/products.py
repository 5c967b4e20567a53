"""Matrix products on the query path, by OpenCV rather than numpy.

numpy's product runs on OpenBLAS, whose threads keep spinning for tens of milliseconds after a
call, and the single-query FAISS scan that follows slows down. Measured apart on this project's
2-core machine, a scan of 100k vectors that takes 29-31 ms alone took 61 ms after the pooling
product and 68 ms after a 2,000-row re-rank by numpy; by OpenCV's gemm (as fast at these
sizes), 35 and 46 ms.
"""

from __future__ import annotations

import numpy as np


def matmul(a: np.ndarray, b: np.ndarray, *, b_transposed: bool = False) -> np.ndarray:
    """a @ b (a @ b.T with b_transposed) in float32."""
    import cv2

    return cv2.gemm(np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32), 1, None, 0,
                    flags=cv2.GEMM_2_T if b_transposed else 0)
