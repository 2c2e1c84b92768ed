"""Orthanc as the imaging benchmark's baseline: a private instance on loopback ports.

DESIGN.md names Orthanc (the Debian packages ``orthanc`` and ``orthanc-dicomweb``) as the
baseline for DICOM C-STORE and STOW-RS ingest. ``OwnOrthanc`` writes a configuration into a
temporary directory (storage and index there too, so every run starts from an empty store),
starts ``Orthanc config.json`` in a session of its own, waits for ``/system`` and removes
everything afterwards (the process group is killed on ``stop()`` and, should the benchmark
die first, at interpreter exit).

The configuration sets only what a private benchmark instance needs; everything else keeps
the package's defaults, which are the ones that matter for speed and are listed in
``DOCUMENTED_DEFAULTS`` so the benchmark can print them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._harness import SetupError, free_port

INSTALL_HINT = "apt-get install orthanc orthanc-dicomweb"

# Where the Debian packages put the server and the DICOMweb plugin.
ORTHANC_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc", "/usr/local/bin/Orthanc")
PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)
PLUGIN_GLOBS = (
    ("/usr/lib/orthanc", "libOrthancDicomWeb.so*"),
    ("/usr/share/orthanc/plugins", "libOrthancDicomWeb.so*"),
)

# Orthanc's defaults (Orthanc 1.10, /etc/orthanc/orthanc.json) that bear on ingest and query
# speed; the benchmark keeps them and prints them with its setup.
DOCUMENTED_DEFAULTS: dict[str, Any] = {
    "DicomThreadsCount": 4,  # threads of the DICOM server (one association each)
    "HttpThreadsCount": 50,
    "MaximumPduLength": 16384,  # bytes: the PDU size Orthanc offers its peers
    "SyncStorageArea": True,  # fsync() each stored file (the hub acknowledges durably too)
    "StorageAccessOnFind": "Always",  # QIDO/C-FIND may read files for non-indexed tags
    "HttpCompressionEnabled": True,  # gzip answers when the client accepts it
    "KeepAlive": True,
    "TcpNoDelay": True,
    "SaveJobs": True,
    "MallocArenaMax": 5,
    "IngestTranscoding": None,  # files kept as received
    "UnknownSopClassAccepted": False,
}


# DCMTK, under Orthanc's DICOM server, leaves Nagle's algorithm on for its associations unless
# the environment says TCP_NODELAY=1: every C-STORE response then waits for a delayed ACK
# (~40 ms on Linux) and Orthanc stores ~10 small instances/s per association instead of
# hundreds. The benchmark gives Orthanc its best setting (``--orthanc-nagle`` keeps it on).
DCMTK_ENVIRONMENT = {"TCP_NODELAY": "1"}


def find_orthanc() -> Path | None:
    """The ``Orthanc`` executable, or None when the package is not installed."""
    for candidate in ORTHANC_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    found = shutil.which("Orthanc")
    return Path(found) if found else None


def find_dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin shared library of ``orthanc-dicomweb``, or None."""
    for candidate in PLUGIN_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    for directory, pattern in PLUGIN_GLOBS:
        with contextlib.suppress(OSError):
            for match in sorted(Path(directory).glob(pattern)):
                if match.is_file():
                    return match
    return None


def orthanc_version(executable: Path) -> str:
    """``Orthanc --version``'s first line (e.g. "Orthanc 1.10.1")."""
    try:
        out = subprocess.run(
            [str(executable), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "Orthanc (version unknown)"
    return out.splitlines()[0].strip() if out else "Orthanc (version unknown)"


@dataclass
class OwnOrthanc:
    """A private Orthanc with the DICOMweb plugin, its store in a temporary directory.

    ``overrides`` are extra configuration keys (``--orthanc-set KEY=JSON``), applied last.
    """

    aet: str = "ORTHANC"
    overrides: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=lambda: dict(DCMTK_ENVIRONMENT))
    arguments: list[str] = field(default_factory=list)  # e.g. ["--verbose"]
    keep: bool = False
    http_port: int = 0
    dicom_port: int = 0
    executable: Path | None = None
    plugin: Path | None = None
    version: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    _tmp: Path | None = None
    _process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root without its trailing slash."""
        return self.base_url + "/dicom-web"

    @property
    def pid(self) -> int:
        assert self._process is not None, "start() first"
        return self._process.pid

    @property
    def directory(self) -> Path | None:
        return self._tmp

    @property
    def log_path(self) -> Path | None:
        return self._tmp / "orthanc.log" if self._tmp else None

    def start(self, timeout: float = 60.0) -> None:
        """Write the configuration, start Orthanc and wait until its REST API answers.

        SetupError (with the install command) when the package or the plugin is missing.
        """
        self.executable = find_orthanc()
        if self.executable is None:
            raise SetupError(f"Orthanc is not installed; install it with: {INSTALL_HINT}")
        self.plugin = find_dicomweb_plugin()
        if self.plugin is None:
            raise SetupError(
                f"the Orthanc DICOMweb plugin is not installed; install it with: {INSTALL_HINT}"
            )
        self.version = orthanc_version(self.executable)
        self._tmp = Path(tempfile.mkdtemp(prefix="yijian-bench-orthanc-"))
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()
        self.config = {
            "Name": "yijian-bench-orthanc",
            "StorageDirectory": str(self._tmp / "storage"),
            "IndexDirectory": str(self._tmp / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,  # loopback only
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "Plugins": [str(self.plugin)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "StorageCompression": False,  # files kept as received, as the hub does
            "OverwriteInstances": True,  # a resent instance replaces, as the hub's policy
            "ConcurrentJobs": 2,  # the default; no jobs run during the benchmark
            **self.overrides,
        }
        config_path = self._tmp / "config.json"
        config_path.write_text(json.dumps(self.config, indent=2), "utf-8")
        assert self.log_path is not None
        env = dict(os.environ)
        env.update(self.environment)
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [str(self.executable), *self.arguments, str(config_path)],
                cwd=self._tmp,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        atexit.register(self._kill_quietly)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise SetupError(f"Orthanc exited {self._process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
                if self.get_json("/system").get("DicomPort") == self.dicom_port:
                    return
            time.sleep(0.2)
        raise SetupError(f"Orthanc not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def get_json(self, path: str, timeout: float = 10.0) -> dict[str, Any]:
        """GET a REST path (e.g. ``/statistics``) as JSON."""
        with urllib.request.urlopen(self.base_url + path, timeout=timeout) as response:
            value = json.loads(response.read())
        return value if isinstance(value, dict) else {"value": value}

    def instance_count(self) -> int:
        """Instances stored (``/statistics``)."""
        return int(self.get_json("/statistics")["CountInstances"])

    def log_tail(self, chars: int = 4000) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text("utf-8", "replace")[-chars:]
        return ""

    def log_problems(self) -> tuple[int, str]:
        """(error lines ``E…`` in Orthanc's log, the first few of them)."""
        if not (self.log_path and self.log_path.exists()):
            return 0, ""
        errors = [
            line
            for line in self.log_path.read_text("utf-8", "replace").splitlines()
            if line.startswith("E")
        ]
        return len(errors), "\n".join(errors[:5])

    def _kill_quietly(self) -> None:
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)

    def stop(self) -> None:
        """Stop Orthanc (its process group) and, unless ``keep``, remove its files."""
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=10)
        with contextlib.suppress(ValueError):
            atexit.unregister(self._kill_quietly)
        if not self.keep and self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
