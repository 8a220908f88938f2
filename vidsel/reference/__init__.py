"""Pure-PyTorch references of every vidsel op: short, readable, citing the papers' equations.

They are the ground truth every backend is tested against, and run on any device.
"""
