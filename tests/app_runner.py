"""Run the application as a user does (``python app -i IN -o OUT -w WORK``) and snapshot folders.

Shared by the end-to-end, hostile-input and container-contract tests.
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Tiny, fast training for tests: the suite must stay well under 15 minutes on 2 CPU cores.
FAST_ENV = {
    "NSN2N_MAX_STEPS": "20",
    "NSN2N_BATCH_SIZE": "4",
    "NSN2N_CROP_SIZE": "32",
    "NSN2N_UNET_WIDTH": "8",
    "NSN2N_UNET_DEPTH": "2",
    "NSN2N_LEARNING_RATE": "0.003",
    "NSN2N_NUM_THREADS": "1",
    "NSN2N_DEVICE": "cpu",
    "NSN2N_LOG_EVERY_S": "1",
}


@dataclass
class AppRun:
    returncode: int
    log: str
    output: Path
    workdir: Path

    def output_files(self) -> list[Path]:
        return sorted(p for p in self.output.rglob("*") if p.is_file()) if self.output.exists() else []

    def series_folders(self) -> list[Path]:
        return sorted(p for p in self.output.iterdir() if p.is_dir()) if self.output.exists() else []


def _raise_stack_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = 32 * 1024 * 1024
    if hard == resource.RLIM_INFINITY or hard >= want:
        resource.setrlimit(resource.RLIMIT_STACK, (want, hard))


def run_app(
    input_dir: Path,
    output_dir: Path,
    workdir: Path,
    *,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    fast: bool = True,
    timeout: float = 600,
) -> AppRun:
    """``python app -i input_dir -o output_dir -w workdir [extra_args]`` in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("NSN2N_", "HOLOSCAN_"))}
    full_env["PYTHONUNBUFFERED"] = "1"
    if fast:
        full_env.update(FAST_ENV)
    full_env.update(env or {})
    cmd = [sys.executable, str(REPO / "app"), "-i", str(input_dir), "-o", str(output_dir), "-w", str(workdir)]
    cmd += extra_args or []
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_raise_stack_limit,
        check=False,
    )
    return AppRun(proc.returncode, proc.stdout + proc.stderr, Path(output_dir), Path(workdir))


def folder_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest), plus modes of folders."""
    digest: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_file():
            digest[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            digest[rel] = f"dir {oct(path.stat().st_mode)}"
    return digest
