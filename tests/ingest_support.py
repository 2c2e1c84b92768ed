"""Helpers for ingest tests: the MLLP listener as a real process, and an MLLP sender."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import hl7
from hl7.client import MLLPClient

YIJIAN_BIN = str(Path(__import__("sys").executable).parent / "yijian")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Listener:
    """``yijian mllp`` in its own process, so tests can kill it as an operator or a crash would."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self, timeout: float = 60) -> None:
        handle = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [YIJIAN_BIN, "mllp", "--port", str(self.port), "--no-migrate"],
            env=self.env,
            stdout=handle,
            stderr=handle,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"yijian mllp exited with {self.process.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.1)
        raise RuntimeError("yijian mllp did not start listening")

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as in a crash."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> int | None:
        """SIGTERM: the graceful stop an operator does."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            return self.process.wait(timeout=60)
        return self.process.returncode if self.process else None


def unframe(data: bytes) -> bytes:
    return data.strip(b"\x0b\x1c\r\n")


def send(port: int, message: bytes, *, timeout: float = 30) -> bytes:
    """One message over MLLP with the ``hl7`` package's client; the ACK without framing."""
    client = MLLPClient("127.0.0.1", port)
    client.socket.settimeout(timeout)
    try:
        answer = unframe(_receive_frame(client, client.send_message(message)))
    finally:
        client.close()
    if not answer:
        raise ConnectionError("the connection closed without an acknowledgement")
    return answer


def _receive_frame(client: MLLPClient, first: bytes) -> bytes:
    data = first
    while not data.endswith(b"\x1c\r") and first:
        more = client.socket.recv(65536)
        if not more:
            break
        data += more
    return data


def ack_fields(ack: bytes, encoding: str = "utf-8") -> tuple[str, str, str]:
    """(MSA-1 code, MSA-2 control id, the reason: MSA-3 text and the ERR segment, or '')
    parsed by the ``hl7`` package."""
    message = hl7.parse(ack.decode(encoding))
    msa = message.segment("MSA")
    reason = str(msa[3]) if len(msa) > 3 else ""
    with contextlib.suppress(KeyError):
        reason = f"{reason} {message.segment('ERR')}"
    return str(msa[1]), str(msa[2]), reason.strip()


def env_without_broker(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "YIJIAN_BROKER_URL"} | {"PYTHONUNBUFFERED": "1"}


def wait_for(predicate, timeout: float = 30, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value or time.time() > deadline:
            return value
        time.sleep(interval)
