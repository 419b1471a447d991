"""Independent media clients for tests: Debian ffmpeg/ffprobe as publishers, writers and probes."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"


def ffmpeg_publish(url: str, seconds: float, *, size: str = "640x360", fps: int = 30, gop: int = 30,
                   tone: int = 440, realtime: bool = True, noise: int = 0,
                   video_kbps: int = 0) -> subprocess.Popen[str]:
    """An RTMP publisher: ffmpeg's own lavfi test pattern + tone, H.264/AAC in FLV. ``noise``
    (0-100) adds temporal noise so encoders downstream have real work (and can spend a bitrate);
    ``video_kbps`` caps the publisher's own bitrate."""
    args = [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin"]
    if realtime:
        args.append("-re")
    pattern = f"testsrc2=size={size}:rate={fps}" + (f",noise=alls={noise}:allf=t" if noise else "")
    args += ["-f", "lavfi", "-i", pattern,
             "-f", "lavfi", "-i", f"sine=frequency={tone}:sample_rate=48000",
             "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-g", str(gop),
             *(["-b:v", f"{video_kbps}k", "-maxrate", f"{video_kbps}k", "-bufsize", f"{video_kbps * 2}k"]
               if video_kbps else []),
             "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k", "-f", "flv", url]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def ffmpeg_write(path: Path, seconds: float, *, fmt: str = "mp4", size: str = "640x360",
                 extra: list[str] | None = None) -> Path:
    """Write an H.264/AAC file (mp4, or an HLS playlist with fmt='hls') for pull-source tests."""
    args = [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30", "-f", "lavfi", "-i", "sine",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-g", "30",
            "-pix_fmt", "yuv420p", "-c:a", "aac", *(extra or []), "-f", fmt, str(path)]
    subprocess.run(args, check=True, timeout=120)
    return path


def ffprobe_streams(url: str, timeout_s: float = 30) -> list[dict]:
    out = subprocess.run([FFPROBE, "-v", "error", "-show_entries",
                          "stream=codec_name,codec_type,width,height", "-of", "json", url],
                         capture_output=True, text=True, timeout=timeout_s)
    assert out.returncode == 0, f"ffprobe {url} failed: {out.stderr}"
    return json.loads(out.stdout)["streams"]


def ffmpeg_decode_errors(url: str, seconds: float = 4, timeout_s: float = 60) -> str:
    """Decode ``seconds`` of ``url`` with ffmpeg; returns what it printed at level error."""
    out = subprocess.run([FFMPEG, "-hide_banner", "-v", "error", "-nostdin", "-i", url, "-t",
                          str(seconds), "-f", "null", "-"], capture_output=True, text=True,
                         timeout=timeout_s)
    return out.stderr.strip() + ("" if out.returncode == 0 else f"\n(exit {out.returncode})")
