"""The lowest layer: what every transformation is made of. Imports nothing else of gradtx.

``tree`` (errors, leaf paths) → ``struct`` (frozen dataclass pytrees, ``hyper``/``static``)
→ ``state`` → ``packed``/``pieces`` (the packed data type, stages on buffers) → ``numerics``
→ ``transformation`` (the protocol) → ``context``/``stage`` (a rule for one array, lifted)
→ ``knobs`` (``Direction``, ``Scale``, ``Knobs``) and ``chain``.
"""
