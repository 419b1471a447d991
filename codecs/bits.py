"""An MSB-first bit reader for the small headers media formats pack bit by bit (SPS, ASC)."""
from __future__ import annotations


class BitReader:
    """Reads fields most-significant bit first; running past the end raises ``error(truncated)``.

    The whole input becomes one integer, which is fast for the short headers this serves (callers
    cap their input: an SPS at 4096 bytes, an AudioSpecificConfig at 16)."""

    __slots__ = ("_value", "_left", "_error", "_truncated")

    def __init__(self, data: bytes, error: type[ValueError], truncated: str) -> None:
        self._value = int.from_bytes(data, "big")
        self._left = len(data) * 8
        self._error = error
        self._truncated = truncated

    def u(self, n: int) -> int:
        """An unsigned ``n``-bit field."""
        if n > self._left:
            raise self._error(self._truncated)
        self._left -= n
        return (self._value >> self._left) & ((1 << n) - 1)

    def ue(self) -> int:
        """An unsigned exp-Golomb code (H.264 9.1)."""
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise self._error("exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        """A signed exp-Golomb code (H.264 9.1.1)."""
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)
