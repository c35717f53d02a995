"""Samples to files (:mod:`.files`) and inpainting (:mod:`.inpaint`, docs/algorithms.md §9)."""
