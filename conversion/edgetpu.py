"""Compiling the int8 model with Coral's ``edgetpu_compiler`` and reading its report.

The compiler (x86-64 Linux only, from Coral's apt repository) is run as::

    edgetpu_compiler -s -o OUTDIR MODEL.tflite

and writes ``OUTDIR/MODEL_edgetpu.tflite`` and ``OUTDIR/MODEL_edgetpu.log``. Its standard
output (``-s`` adds the per-operator table) reads, for a model that maps fully::

    Edge TPU Compiler version 16.0.384591198
    Model compiled successfully in 1064 ms.
    Input model: model.tflite
    ...
    Number of Edge TPU subgraphs: 1
    Total number of operations: 72
    Operation log: model_edgetpu.log

and, when some ops stay on the CPU, also::

    Number of operations that will run on Edge TPU: 138
    Number of operations that will run on CPU: 3

    Operator                       Count      Status
    RESHAPE                        1          Operation is otherwise supported, but not mapped ...
    CONV_2D                        36         Mapped to Edge TPU

The log file holds the same operator table.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conversion.errors import ConversionError, EdgeTPUCompileError

log = logging.getLogger(__name__)

COMPILER = "edgetpu_compiler"
MAPPED = "Mapped to Edge TPU"
INSTALL_STEPS = (
    "curl https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add -",
    'echo "deb https://packages.cloud.google.com/apt coral-edgetpu-stable main" '
    "| sudo tee /etc/apt/sources.list.d/coral-edgetpu.list",
    "sudo apt-get update",
    "sudo apt-get install edgetpu-compiler",
)
INSTALL_NOTE = (
    "edgetpu_compiler runs on x86-64 Debian/Ubuntu Linux only (not on a Raspberry Pi or a "
    "Mac); elsewhere use Coral's web compiler (Google Colab)."
)

_NUMBERS = {
    "ops_edgetpu": re.compile(r"Number of operations that will run on Edge TPU:\s*(\d+)"),
    "ops_cpu": re.compile(r"Number of operations that will run on CPU:\s*(\d+)"),
    "total_ops": re.compile(r"Total number of operations:\s*(\d+)"),
    "subgraphs": re.compile(r"Number of Edge TPU subgraphs:\s*(\d+)"),
}
_TEXTS = {
    "version": re.compile(r"Edge TPU Compiler version\s+(\S+)"),
    "on_chip_used": re.compile(r"On-chip memory used for caching model parameters:\s*(\S+)"),
    "off_chip_used": re.compile(
        r"Off-chip memory used for streaming uncached model parameters:\s*(\S+)"
    ),
    "output_model": re.compile(r"Output model:\s*(\S+)"),
}
_OP_ROW = re.compile(r"^([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*?)\s*$")


@dataclass(frozen=True)
class OperatorStatus:
    op: str
    count: int
    status: str

    @property
    def mapped(self) -> bool:
        return self.status.startswith(MAPPED)


@dataclass
class CompileReport:
    """What the compiler said about one model."""

    ops_edgetpu: int | None = None
    ops_cpu: int | None = None
    total_ops: int | None = None
    subgraphs: int | None = None
    version: str | None = None
    on_chip_used: str | None = None
    off_chip_used: str | None = None
    output_model: str | None = None
    operators: list[OperatorStatus] = field(default_factory=list)

    @property
    def cpu_operators(self) -> list[OperatorStatus]:
        return [o for o in self.operators if not o.mapped]

    def as_json(self) -> dict[str, Any]:
        return {
            "compiler_version": self.version,
            "ops_edgetpu": self.ops_edgetpu,
            "ops_cpu": self.ops_cpu,
            "total_ops": self.total_ops,
            "subgraphs": self.subgraphs,
            "on_chip_memory_used": self.on_chip_used,
            "off_chip_memory_used": self.off_chip_used,
            "operators": [
                {"op": o.op, "count": o.count, "status": o.status} for o in self.operators
            ],
        }

    def summary(self) -> str:
        text = f"{self.ops_edgetpu} op(s) run on the Edge TPU, {self.ops_cpu} on the CPU"
        cpu = self.cpu_operators
        if cpu:
            text += " (" + "; ".join(f"{o.op} x{o.count}: {o.status}" for o in cpu) + ")"
        return text


def parse_operator_table(text: str) -> list[OperatorStatus]:
    """The ``Operator  Count  Status`` rows of the compiler's output or log."""
    rows: list[OperatorStatus] = []
    in_table = False
    for line in text.splitlines():
        if re.match(r"^\s*Operator\s+Count\s+Status\s*$", line):
            in_table = True
            continue
        if not in_table:
            continue
        match = _OP_ROW.match(line.strip())
        if match:
            rows.append(OperatorStatus(match.group(1), int(match.group(2)), match.group(3)))
    return rows


def parse_compiler_output(stdout: str, log_text: str = "") -> CompileReport:
    """Parse the compiler's standard output and (optionally) its ``*_edgetpu.log``.

    Accepts both forms the compiler prints: with the "Number of operations that will run on
    Edge TPU/CPU" lines (partial mapping) and without them (everything mapped: the Edge TPU
    count is then the total).
    """
    report = CompileReport()
    text = stdout + "\n" + log_text
    for key, pattern in _NUMBERS.items():
        match = pattern.search(text)
        if match:
            setattr(report, key, int(match.group(1)))
    for key, pattern in _TEXTS.items():
        match = pattern.search(text)
        if match:
            setattr(report, key, match.group(1))
    report.operators = parse_operator_table(log_text) or parse_operator_table(stdout)
    if report.operators and report.ops_edgetpu is None:
        report.ops_edgetpu = sum(o.count for o in report.operators if o.mapped)
        report.ops_cpu = sum(o.count for o in report.operators if not o.mapped)
    if report.ops_edgetpu is None and report.total_ops is not None:
        report.ops_edgetpu, report.ops_cpu = report.total_ops, 0
    if report.total_ops is None and report.ops_edgetpu is not None:
        report.total_ops = report.ops_edgetpu + (report.ops_cpu or 0)
    return report


def find_compiler() -> str | None:
    """The compiler's path (``EDGECAM_EDGETPU_COMPILER`` overrides), or None."""
    override = os.environ.get("EDGECAM_EDGETPU_COMPILER")
    if override:
        return override if Path(override).exists() else shutil.which(override)
    return shutil.which(COMPILER)


def compile_command(model: Path, out_dir: Path, compiler: str = COMPILER) -> list[str]:
    return [compiler, "-s", "-o", str(out_dir), str(model)]


def command_line(model: Path, out_dir: Path) -> str:
    """The shell command a user can run later."""
    return shlex.join(compile_command(model, out_dir))


@dataclass
class CompileResult:
    model: Path  # OUTDIR/<stem>_edgetpu.tflite
    log: Path | None
    stdout: str
    report: CompileReport


def compile_model(
    model: Path, out_dir: Path, compiler: str | None = None, timeout_s: float = 600.0
) -> CompileResult:
    """Run the compiler on ``model``; an EdgeTPUCompileError when it fails."""
    compiler = compiler or find_compiler()
    if compiler is None:
        raise ConversionError(f"{COMPILER} not found on PATH", INSTALL_STEPS[-1])
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = compile_command(model, out_dir, compiler)
    log.info("compiling for the Edge TPU: %s", shlex.join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise EdgeTPUCompileError(
            f"{COMPILER} did not finish within {timeout_s:.0f} s",
            "a very large model: try a smaller one or run the command by hand",
        ) from None
    except OSError as exc:
        raise EdgeTPUCompileError(f"cannot run {compiler}: {exc}") from None
    output = proc.stdout + (("\n" + proc.stderr) if proc.stderr else "")
    compiled = out_dir / f"{model.stem}_edgetpu.tflite"
    log_file = out_dir / f"{model.stem}_edgetpu.log"
    if proc.returncode != 0 or not compiled.exists():
        tail = " | ".join(line for line in output.strip().splitlines()[-4:] if line.strip())
        raise EdgeTPUCompileError(
            f"{COMPILER} failed (exit {proc.returncode}): {tail or 'no output'}",
            "check the op report above: ops outside Coral's list or float ops cannot compile",
        )
    log_text = log_file.read_text(encoding="utf-8", errors="replace") if log_file.exists() else ""
    report = parse_compiler_output(output, log_text)
    return CompileResult(compiled, log_file if log_file.exists() else None, output, report)
