"""ITU-R BT.601 luma weights, in the three forms the backends compute with.

uint8 images use integers, so every backend gives the same byte: Y = (299 R + 587 G + 114 B + 500)
// 1000 is the exact weighted sum rounded half up, and since the weights add up to 1000 it is never
above 255 (saturation cannot trigger). Float images use float32 weights: Y = 0.299 R + 0.587 G +
0.114 B, summed left to right (a GPU may fuse the multiply-adds: a difference in the last bit).
"""
import numpy as np

W_INT = (299, 587, 114)
DIV, HALF = 1000, 500
W_PY = (0.299, 0.587, 0.114)
W_F32 = tuple(np.float32(w) for w in W_PY)
