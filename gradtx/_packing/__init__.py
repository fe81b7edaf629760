"""Packing: building the packed layout (:func:`gradtx.pack`) from a params tree."""
