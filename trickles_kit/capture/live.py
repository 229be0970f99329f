"""Record live traffic with tcpdump: ``LiveCapture(interface, path)`` as a context manager.

    with LiveCapture("lo", "run.pcap"):
        ...  # run a transfer
    cap = decode_pcap("run.pcap")

`start()` runs ``tcpdump -i IFACE -w PATH -U --immediate-mode -B KIB -s SNAPLEN -n FILTER`` and
returns once tcpdump says it is listening (so nothing sent afterwards is missed); `stop()` waits
until the file stops growing, sends SIGINT — tcpdump then flushes and closes the file — and
waits. `-U` writes each packet as it arrives, so the file is
readable while the capture runs (the reader tolerates a cut last record).

On Linux loopback (``-i lo``) tcpdump sees each datagram once: the kernel hands a looped-back
packet to packet sockets on transmit only, not again on receive (``-i any`` is the same on
current kernels). `tests/capture/test_decode.py` checks this. The link type on ``lo`` is EN10MB
(zero MAC addresses); on ``any`` it is LINUX_SLL2 (or LINUX_SLL) — `pcapio` reads all of them.

Capturing needs root or CAP_NET_RAW. Run as root, tcpdump would drop to its own user before
writing (and fail on a directory only root can write); we pass ``-Z root`` to keep it root.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from trickles_kit.net import sysdeps

DEFAULT_FILTER = "ip proto 253 or udp or tcp"


class LiveCaptureError(RuntimeError):
    """tcpdump is missing, refused to start, or died."""


class LiveCapture:
    """One tcpdump process writing `path`. Context manager: starts on enter, stops on exit."""

    def __init__(self, interface: str = "lo", path: str | os.PathLike[str] = "capture.pcap",
                 filter: str | None = DEFAULT_FILTER, snaplen: int = 0,  # noqa: A002
                 buffer_kib: int = 65536, tcpdump: str | None = None,
                 start_timeout: float = 10.0) -> None:
        if snaplen < 0:
            raise ValueError("snaplen must be >= 0 (0 = the whole packet)")
        if buffer_kib < 1:
            raise ValueError("buffer_kib must be >= 1")
        self.buffer_kib = buffer_kib
        self.interface = interface
        self.path = str(path)
        self.filter = filter or ""
        self.snaplen = snaplen
        self.start_timeout = start_timeout
        self._tcpdump = tcpdump
        self.proc: subprocess.Popen | None = None
        self.stderr_lines: list[str] = []
        self.stats: dict[str, int] = {}
        self.linktype: str | None = None
        self._reader: threading.Thread | None = None
        self._listening = threading.Event()

    # ------------------------------------------------------------------ command
    def command(self) -> list[str]:
        exe = self._tcpdump or shutil.which("tcpdump")
        if exe is None:
            raise LiveCaptureError(sysdeps.problem(["tcpdump"], "trickles capture")
                                   or "tcpdump not found")
        # --immediate-mode: hand each packet over at once (with the TPACKET_V3 ring, packets of
        # a not-yet-retired block are lost on SIGINT: "N received by filter, 0 captured")
        # -B: in immediate mode the ring has fixed-size frames (~64 KiB each on lo with -s 0):
        # the default 2 MiB holds ~30 packets and a burst is "dropped by kernel"
        cmd = [exe, "-i", self.interface, "-w", self.path, "-U", "--immediate-mode",
               "-B", str(self.buffer_kib), "-s", str(self.snaplen), "-n"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd += ["-Z", "root"]
        if self.filter:
            cmd.append(self.filter)
        return cmd

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LiveCapture:
        if self.proc is not None:
            raise LiveCaptureError("this capture is already running")
        cmd = self.command()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         text=True, errors="replace")
        except OSError as e:
            raise LiveCaptureError(f"cannot run tcpdump: {e}") from None
        self._reader = threading.Thread(target=self._read_stderr, daemon=True,
                                         name="tcpdump-stderr")
        self._reader.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None:
                self._reader.join(1.0)
                msg = " ".join(self.stderr_lines).strip() or f"exit status {self.proc.returncode}"
                self.proc = None
                raise LiveCaptureError(f"tcpdump failed to start: {msg}")
            if time.monotonic() > deadline:
                self._kill()
                raise LiveCaptureError(
                    f"tcpdump did not report 'listening' within {self.start_timeout:g} s")
        return self

    def _read_stderr(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip("\n")
            self.stderr_lines.append(line)
            if "listening on" in line:
                m = re.search(r"link-type (\S+)", line)
                self.linktype = m.group(1) if m else None
                self._listening.set()
            m = re.match(r"(\d+) packets? (captured|received by filter|dropped by kernel)", line)
            if m:
                self.stats[m.group(2).replace(" ", "_")] = int(m.group(1))

    def stop(self, timeout: float = 10.0, settle: float = 1.0) -> dict[str, int]:
        """Let tcpdump drain (the file stops growing, at most `settle` s), SIGINT, wait.

        SIGINT makes tcpdump stop reading at once: packets still in the kernel's ring would be
        lost, hence the wait for the file size to stay the same over two 50 ms polls. Returns
        tcpdump's counters (captured, received_by_filter, dropped_by_kernel).
        """
        proc = self.proc
        if proc is None:
            return self.stats
        end = time.monotonic() + settle
        last, same = -1, 0
        while proc.poll() is None and time.monotonic() < end and same < 2:
            time.sleep(0.05)
            try:
                size = os.path.getsize(self.path)
            except OSError:
                size = -1
            same = same + 1 if size == last else 0
            last = size
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        if self._reader is not None:
            self._reader.join(2.0)
        self.proc = None
        return self.stats

    def _kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> LiveCapture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["DEFAULT_FILTER", "LiveCapture", "LiveCaptureError"]
