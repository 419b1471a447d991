"""Pure, I/O-free media code (installed as ``mesh_codecs``).

Nothing here imports ``mesh``: FLV tags, H.264 (AVCC / Annex B), AAC (ADTS),
the MPEG-TS packetiser and its Numba kernels. Every function takes bytes and
returns bytes or values; none owns a socket, a clock or a file.
"""
